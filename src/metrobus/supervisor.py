"""``--replicas N``: N worker processes of one stop under one supervisor.

The workers join the same consumer group (Kafka spreads the partitions), the
input topic gets at least N partitions, a crashed worker is restarted with
backoff, and the supervisor serves the one stats endpoint. SIGTERM/SIGINT are
passed on; workers get 10 s to drain before they are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time

from metrobus.host import install_signals
from metrobus.http import make_app, serve
from metrobus.settings import Settings, route_order
from metrobus.store import connect

log = logging.getLogger(__name__)
DRAIN_SECONDS = 10.0


async def _worker(index: int, argv: list[str], stopping: asyncio.Event) -> None:
    """Keep worker ``index`` running until ``stopping``; restart it when it dies."""
    backoff = 0.5
    while not stopping.is_set():
        cmd = [sys.executable, "-m", "metrobus", *argv, "--worker-id", str(index)]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*cmd)
        log.info("worker %d started (pid %d)", index, proc.pid)
        wait = asyncio.ensure_future(proc.wait())
        halt = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([wait, halt], return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        if stopping.is_set():
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(wait, DRAIN_SECONDS)
                except TimeoutError:
                    log.warning("worker %d did not drain in %.0fs: killed", index, DRAIN_SECONDS)
                    proc.kill()
                    await proc.wait()
            return
        log.warning(
            "worker %d exited with code %s; restarting in %.1fs", index, proc.returncode, backoff
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), backoff)
        # a worker that ran a while before dying starts the backoff afresh
        backoff = 0.5 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)


async def async_supervise(
    settings: Settings,
    worker_argv: list[str],
    replicas: int,
    http_port: int | None,
    stopping: asyncio.Event,
) -> None:
    client = connect(settings.redis_url)
    web = None
    try:
        if http_port is not None:
            app = make_app(client, settings.redis_key(""), route_order(settings))
            web = await serve(app, settings.http_host, http_port)
        workers = [
            asyncio.ensure_future(_worker(i, worker_argv, stopping)) for i in range(replicas)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            stopping.set()  # one failed: stop (and wait for) the others, leave no orphan
            await asyncio.gather(*workers, return_exceptions=True)
    finally:
        if web is not None:
            await web.cleanup()
        await client.aclose()


def supervise(
    settings: Settings, worker_argv: list[str], replicas: int, http_port: int | None
) -> None:
    """Blocking entry point of ``metrobus run STOP --replicas N``."""

    async def main() -> None:
        stopping = asyncio.Event()
        install_signals(stopping)
        await async_supervise(settings, worker_argv, replicas, http_port, stopping)

    asyncio.run(main())
