"""The hand-stepped concurrent runner of a batch's handlers."""

from __future__ import annotations

import asyncio

import pytest

from metrobus.drive import run_all


async def test_results_come_back_in_input_order_with_exceptions() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]

    async def immediate(i: int) -> int:
        return i

    async def waits(i: int) -> int:
        value: int = await futures[i]
        await asyncio.sleep(0)
        return value * 10 + await futures[(i + 1) % 3]

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    for i, fut in enumerate(futures):
        loop.call_later(0.01 * (3 - i), fut.set_result, i + 1)
    results = await run_all([immediate(7), waits(0), fails(), waits(2)])
    assert results[0] == 7
    assert results[1] == 12
    assert isinstance(results[2], ValueError)
    assert results[3] == 31


async def test_handlers_run_concurrently_not_one_after_another() -> None:
    async def slow(i: int) -> int:
        await asyncio.sleep(0.2)
        return i

    started = asyncio.get_running_loop().time()
    assert await run_all([slow(i) for i in range(50)]) == list(range(50))
    loop_time = asyncio.get_running_loop().time()
    assert loop_time - started < 2.0  # 50 x 0.2 s would be 10 s


async def test_cancellation_closes_suspended_handlers() -> None:
    closed = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            closed.append(True)

    task = asyncio.ensure_future(run_all([forever(), forever()]))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True, True]
