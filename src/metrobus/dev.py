"""``metrobus dev``: the whole pipeline on one machine, with nothing installed.

Starts an embedded broker (Tansu) and Redis on free loopback ports unless
Kafka or Redis are configured, seeds the data, runs every stop of the config
through the same ``host.async_run`` as ``metrobus run``, pushes load, serves
the dashboard and shows a live summary. Ctrl-C or ``duration`` stops it all
in order: load, stops (each drains and commits), HTTP, embedded services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from metrobus import host, loadgen
from metrobus.devstack import (
    TANSU_MISSING,
    EmbeddedRedis,
    EmbeddedTansu,
    ServiceError,
    tansu_available,
)
from metrobus.http import listen_error, make_app, serve
from metrobus.report import stats_table
from metrobus.seed import seed
from metrobus.settings import Settings, StopConfig, route_order
from metrobus.stats import read_stats
from metrobus.store import TRANSIENT_REDIS, connect, wait_for_redis

log = logging.getLogger(__name__)
EMBEDDED_SESSION_TIMEOUT_MS = 2000  # Tansu holds each group join for half of it


@dataclass(frozen=True)
class DevOptions:
    rate: float = 1000.0
    http_port: int = 5000
    duration: float | None = None
    accounts: int = 100_000
    keep: bool = False


def check_port(host_name: str, port: int) -> None:
    """Fail now, in one line, if the dashboard port is taken (before starting anything)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_name, port))
        except OSError as exc:
            raise listen_error(exc, host_name, port) from exc


@contextlib.asynccontextmanager
async def embedded(settings: Settings, workdir: Path) -> AsyncIterator[Settings]:
    """Settings pointing at configured services, or at embedded ones started here."""
    started: list[EmbeddedRedis | EmbeddedTansu] = []
    try:
        if "bootstrap" not in settings.explicit:
            if not tansu_available():
                raise ServiceError(TANSU_MISSING)
            broker = EmbeddedTansu(workdir / "tansu")
            await asyncio.to_thread(broker.start)
            started.append(broker)
            settings = settings.replace(
                bootstrap=broker.bootstrap, session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS
            )
            log.info("embedded broker (Tansu, memory-only) at %s", broker.bootstrap)
        if "redis_url" not in settings.explicit:
            redis = EmbeddedRedis(workdir / "redis")
            await asyncio.to_thread(redis.start)
            started.append(redis)
            settings = settings.replace(redis_url=redis.url)
            log.info("embedded Redis at %s", redis.url)
        yield settings
    finally:
        for server in reversed(started):
            await asyncio.to_thread(server.stop)


async def _summary(settings: Settings, stopping: asyncio.Event, console: Console) -> None:
    """The live terminal table on a terminal; a plain line every 5 s otherwise."""
    client = connect(settings.redis_url)
    order, prefix = route_order(settings), settings.redis_key("")
    live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
    last_line = 0.0
    try:
        if live is not None:
            live.start()
        while not stopping.is_set():
            with contextlib.suppress(*TRANSIENT_REDIS):
                doc = await read_stats(client, prefix, order)
                rates = {n: s["rate_in"] for n, s in doc["stops"].items()}
                if live is not None:
                    live.update(stats_table(doc, rates))
                elif time.monotonic() - last_line >= 5:
                    last_line = time.monotonic()
                    p = doc["pipeline"]
                    line = "  ".join(f"{n} {r:,.0f}/s" for n, r in rates.items())
                    print(
                        f"dev: pushed {p['pushed']:,} delivered {p['delivered']:,} "
                        f"dropped {p['dropped']:,} errors {p['errors']:,} | {line}",
                        file=sys.stderr,
                        flush=True,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
    finally:
        if live is not None:
            live.stop()
        await client.aclose()


async def run_dev(
    settings: Settings, options: DevOptions, stopping: asyncio.Event
) -> dict[str, Any]:
    """Run everything until ``stopping`` (or the duration); returns the final stats."""
    check_port(settings.http_host, options.http_port)
    workdir = Path(tempfile.mkdtemp(prefix="metrobus-dev."))
    sink = workdir / "Log.jsonl"
    console = Console(stderr=True)
    try:
        async with embedded(settings, workdir) as settings:
            for name, stop in settings.stops.items():
                if stop.kind == "sink" and stop.options.get("path", "-") == "-":
                    # stdout belongs to the live summary: delivered messages go to a file
                    opts = {**stop.options, "path": str(workdir / f"{name}.jsonl")}
                    settings = settings.with_stop(StopConfig(name, "sink", opts))
            client = connect(settings.redis_url)
            await wait_for_redis(client, settings.redis_url, settings.connect_timeout)
            console.print(f"[bold]metrobus dev[/]: seeding {options.accounts:,} accounts …")
            await seed(client, settings.redis_key(""), options.accounts, progress=False)
            app = make_app(client, settings.redis_key(""), route_order(settings))
            web = await serve(app, settings.http_host, options.http_port)
            console.print(
                f"dashboard: http://{settings.http_host}:{options.http_port}/   "
                f"delivered messages: {sink}   Ctrl-C stops",
                soft_wrap=True,
            )
            try:
                await _run_all(client, settings, options, stopping, console)
                return await read_stats(client, settings.redis_key(""), route_order(settings))
            finally:
                await web.cleanup()
                await client.aclose()
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run_all(
    client: Any, settings: Settings, options: DevOptions, stopping: asyncio.Event, console: Console
) -> None:
    halt_stops = asyncio.Event()  # stops outlive the load generator by a drain period
    stops = [
        asyncio.create_task(host.async_run(settings, name, stopping=halt_stops), name=name)
        for name in route_order(settings)
    ]
    pusher = asyncio.create_task(
        loadgen.push(settings, rate=options.rate, count=0, stopping=stopping, progress=False)
    )
    summary = asyncio.create_task(_summary(settings, halt_stops, console))
    timer = asyncio.create_task(asyncio.sleep(options.duration or 10**9))
    waiting = [*stops, pusher, timer, asyncio.create_task(stopping.wait())]
    try:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in stops or task is pusher:
                task.result()  # a stop or the pusher failed: raise its error
        stopping.set()
        result = await pusher
        console.print(f"load: sent {result.sent:,} ({result.rate:,.0f}/s); draining …")
        await _drain(client, settings, result.sent, 10.0)
    finally:
        stopping.set()
        halt_stops.set()
        timer.cancel()
        results = await asyncio.gather(*stops, pusher, summary, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and not isinstance(errors[0], asyncio.CancelledError):
            raise errors[0]


async def _drain(client: Any, settings: Settings, sent: int, timeout: float) -> None:
    """Wait (bounded) until every message sent has an outcome."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = await read_stats(client, settings.redis_key(""), route_order(settings))
        if doc["pipeline"]["pushed"] >= sent and doc["pipeline"]["in_flight"] <= 0:
            return
        await asyncio.sleep(0.5)


def dev(settings: Settings, options: DevOptions) -> dict[str, Any]:
    """Blocking entry point of ``metrobus dev``."""

    async def main() -> dict[str, Any]:
        stopping = asyncio.Event()
        host.install_signals(stopping)
        host.tune_gc()
        return await run_dev(settings, options, stopping)

    return asyncio.run(main())
