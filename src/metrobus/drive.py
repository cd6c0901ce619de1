"""Run the handlers of a batch concurrently without one asyncio Task per message.

A Task per message costs more than most handlers do. Here each handler
coroutine is stepped by hand: those that never await finish on the spot
(router, sink), the others stop at their first lookup. The batch's lookups
have all been queued by then, so the store sends them in one round trip;
once their futures are done the coroutines are resumed, and so on. Results
(or exceptions) come back in input order, as ``gather(return_exceptions=True)``
would give them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any

_PENDING = object()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def run_all(awaitables: list[Awaitable[Any]]) -> list[Any]:
    coros: list[Coroutine[Any, Any, Any]] = [
        a if asyncio.iscoroutine(a) else _await(a) for a in awaitables
    ]
    results: list[Any] = [_PENDING] * len(coros)
    waiting: dict[int, Any] = {}  # index -> what the coroutine awaits (a future, or None)

    def step(i: int, exc: BaseException | None = None) -> None:
        coro = coros[i]
        try:
            awaited = coro.throw(exc) if exc is not None else coro.send(None)
        except StopIteration as stop:
            results[i] = stop.value
        except BaseException as error:  # the handler's own exception is its result
            results[i] = error
        else:
            if awaited is not None:
                # what a Task does with a yielded future: mark it as taken care of
                awaited._asyncio_future_blocking = False
            waiting[i] = awaited

    try:
        for i in range(len(coros)):
            step(i)
        while waiting:
            futures = {f for f in waiting.values() if f is not None}
            if futures:
                await asyncio.wait(futures)
            else:
                await asyncio.sleep(0)  # bare yields (asyncio.sleep(0) in a handler)
            ready = [i for i, f in waiting.items() if f is None or f.done()]
            for i in ready:
                del waiting[i]
                step(i)
    finally:
        for i in waiting:  # cancelled: do not leave suspended coroutines behind
            coros[i].close()
    return results
