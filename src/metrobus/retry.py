"""Waiting for a service that is not up yet: bounded retries, one log line each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from metrobus.errors import ServiceUnavailable

log = logging.getLogger(__name__)


async def until_up(
    attempt: Callable[[], Awaitable[object]],
    transient: tuple[type[BaseException], ...],
    what: str,
    timeout: float,
) -> None:
    """Call ``attempt`` until it succeeds; ``what`` names the service awaited.

    Backoff doubles from 0.2 s to 5 s; after ``timeout`` seconds the last
    failure becomes a one-line ``ServiceUnavailable``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay, tries = 0.2, 0
    while True:
        tries += 1
        try:
            await attempt()
            return
        except transient as exc:
            left = deadline - loop.time()
            if left <= 0:
                raise ServiceUnavailable(
                    f"{what} is unreachable after {timeout:.0f}s: {exc}"
                ) from exc
            log.warning("waiting for %s (attempt %d, %.0fs left): %s", what, tries, left, exc)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
