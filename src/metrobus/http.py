"""The read-only HTTP endpoint: ``/`` (dashboard), ``/stats``, ``/healthz``.

Stats are read from Redis, so any process serves the cluster-wide picture.
Binds 127.0.0.1 unless a host is given explicitly.
"""

from __future__ import annotations

import errno
import importlib.resources
import logging
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from metrobus.errors import MetrobusError
from metrobus.stats import read_stats
from metrobus.store import TRANSIENT_REDIS

log = logging.getLogger(__name__)


class PortInUse(MetrobusError):
    exit_code = 2


def listen_error(exc: OSError, host: str, port: int) -> MetrobusError:
    """The one-line error for a port we cannot listen on."""
    if exc.errno == errno.EADDRINUSE:
        return PortInUse(
            f"port {port} on {host} is already in use (choose another with --http-port)"
        )
    return MetrobusError(f"cannot listen on {host}:{port}: {exc.strerror}")


def make_app(
    client: aioredis.Redis,
    prefix: str,
    route_order: list[str],
    health: Callable[[], dict[str, object]] | None = None,
) -> web.Application:
    dashboard = importlib.resources.files("metrobus").joinpath("web/dashboard.html").read_bytes()

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=dashboard, content_type="text/html")

    async def stats(_: web.Request) -> web.Response:
        try:
            doc = await read_stats(client, prefix, route_order)
        except TRANSIENT_REDIS as exc:
            return web.json_response({"error": f"Redis unavailable: {exc}"}, status=503)
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        body: dict[str, object] = {"status": "ok"}
        if health is not None:
            body.update(health())
        try:
            await client.ping()
            body["redis"] = "ok"
        except TRANSIENT_REDIS as exc:
            body.update(status="degraded", redis=str(exc))
        return web.Response(
            body=orjson.dumps(body),
            content_type="application/json",
            status=200 if body["status"] == "ok" else 503,
        )

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving; a busy port is a one-line ``PortInUse`` error."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(exc, host, port) from exc
    log.info("stats on http://%s:%d/stats", host, port)
    return runner
