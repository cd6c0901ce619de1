"""Zero loss when a stop is SIGKILLed mid-stream and when the Kafka broker restarts.

At-least-once: duplicates are allowed and measured, losses never.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from metrobus.settings import Settings
from tests.helpers import (
    ROOT,
    Processes,
    assert_balanced,
    expected_outcomes,
    running,
    stats,
    wait_until,
)

STOPS = ("busdriver", "AddEmail", "WhiteList", "Log")


def delivered_xs(sink: Path) -> list[int]:
    return [orjson.loads(line)["payload"]["x"] for line in sink.read_bytes().splitlines()]


async def drained(client: aioredis.Redis, settings: Settings, pushed: int) -> bool:
    """Every message has an outcome and the counts stopped moving.

    With duplicates, outcomes can exceed what was pushed while some messages
    are still on their way: "in flight == 0" alone is not enough.
    """
    before = (await stats(client, settings))["pipeline"]
    if before["pushed"] < pushed or before["in_flight"] != 0:
        return False
    await asyncio.sleep(2.0)  # longer than a flush interval
    return (await stats(client, settings))["pipeline"] == before


async def test_a_stop_killed_with_sigkill_mid_stream_loses_nothing(
    procs: Processes, settings: Settings, redis_client: aioredis.Redis
) -> None:
    assert procs.cli("seed", "--accounts", "3000", "--seed", "11").returncode == 0
    for name in STOPS:
        procs.start(name, name)
    push = await asyncio.create_subprocess_exec(
        *procs.argv("push", "--rate", "1500", "--count", "6000", "--seed", "12"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def addemail_busy() -> bool:
        return (await stats(redis_client, settings))["stops"].get("AddEmail", {}).get("in", 0) > 500

    await wait_until(addemail_busy, 60, "AddEmail to be mid-stream")
    victim = procs.procs["AddEmail"]
    victim.send_signal(signal.SIGKILL)  # no drain, no final commit, counts since last flush lost
    victim.wait()
    procs.start("AddEmail2", "AddEmail")  # a replacement in the same consumer group
    assert await push.wait() == 0
    await wait_until(lambda: drained(redis_client, settings, 6000), 120, "the pipeline to drain")
    procs.terminate()

    doc = await stats(redis_client, settings)
    assert_balanced(doc, duplicates_possible=True)
    expected = await expected_outcomes(settings, redis_client, 6000)
    xs = delivered_xs(procs.tmp / "Log.out")
    # every message that should be delivered was, at least once
    assert len(set(xs)) == expected["delivered"]
    duplicates = len(xs) - len(set(xs))
    assert doc["stops"]["Log"]["delivered"] == len(xs)  # duplicates are counted, not hidden
    print(f"SIGKILL mid-stream: {duplicates} duplicate deliveries out of {len(xs)}")


@pytest.mark.skipif(
    os.environ.get("METROBUS_TEST_BROKER_KIND") != "apache",
    reason="only Apache Kafka keeps its data over a restart (Tansu is memory-only)",
)
async def test_the_pipeline_loses_nothing_when_the_broker_restarts(
    settings: Settings, redis_client: aioredis.Redis, sink_path: Path
) -> None:
    from tests.helpers import produce

    state = os.environ["METROBUS_SERVICES_STATE"]
    first = [
        (str(i).encode(), orjson.dumps({"x": i, "message_type_code": "OTHER"})) for i in range(2000)
    ]
    second = [
        (str(i).encode(), orjson.dumps({"x": i, "message_type_code": "OTHER"}))
        for i in range(2000, 4000)
    ]
    async with running(settings, "busdriver", "Log"):
        await produce(settings, "Source", first)
        await wait_until(lambda: drained(redis_client, settings, 2000), 60, "the first 2,000")
        restart = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "scripts" / "services.py"),
            "restart-broker",
            "--state",
            state,
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert await restart.wait() == 0
        await produce(settings, "Source", second)
        await wait_until(
            lambda: drained(redis_client, settings, 4000), 120, "the 2,000 after the restart"
        )
    doc = await stats(redis_client, settings)
    assert_balanced(doc, duplicates_possible=True)
    xs = delivered_xs(sink_path)
    assert set(xs) == set(range(4000))
