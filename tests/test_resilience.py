"""Transient failures are retried, never turned into drops or dead letters."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from metrobus.devstack import EmbeddedRedis
from metrobus.envelope import Envelope
from metrobus.settings import Settings
from tests.helpers import assert_balanced, produce, read_topic, running, stats, wait_until


def envelopes(accounts: range) -> list[tuple[bytes, bytes]]:
    route = ["AddEmail", "WhiteList", "Log"]
    return [
        (str(a).encode(), Envelope.wrap({"account_number": a}, route).encode()) for a in accounts
    ]


async def test_processing_resumes_after_redis_restarts(settings: Settings, tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        settings = settings.replace(redis_url=server.url)
        client = aioredis.from_url(server.url, decode_responses=True)
        ns = settings.redis_key("")
        # even accounts have an email, odd ones do not
        await client.mset(
            {f"{ns}email:{a}": f"{a}@example.com" for a in range(1000000, 1000400, 2)}
        )

        async def consumed(n: int) -> bool:
            try:
                return (await stats(client, settings))["stops"].get("AddEmail", {}).get("in") == n
            except (aioredis.ConnectionError, OSError):
                return False

        async with running(settings, "AddEmail"):
            await produce(settings, "AddEmail", envelopes(range(1000000, 1000200)))
            await wait_until(lambda: consumed(200), 60, "the first 200 messages")
            await client.save()  # the restarted server loads this snapshot
            server.stop()
            await produce(settings, "AddEmail", envelopes(range(1000200, 1000400)))
            await asyncio.sleep(3)  # the stop meets the outage and backs off
            server.start()
            await wait_until(lambda: consumed(400), 60, "the 200 sent while Redis was down")
        doc = await stats(client, settings)
        await client.aclose()
    finally:
        server.stop()
    s = doc["stops"]["AddEmail"]
    assert (s["in"], s["out"], s["dropped"], s["errors"]) == (400, 200, 200, 0)
    assert s["drop_reasons"] == {"no email for account_number": 200}
    assert_balanced(doc)
    forwarded = [orjson.loads(r.value) for r in await read_topic(settings, "WhiteList", 200)]
    accounts = {f["payload"]["account_number"] for f in forwarded}
    assert accounts == set(range(1000000, 1000400, 2))
    assert all(
        f["payload"]["email"] == f"{f['payload']['account_number']}@example.com" for f in forwarded
    )
