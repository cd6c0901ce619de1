"""The original pipeline as a user runs it: four `metrobus run` processes, push, stats."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from metrobus.devstack import free_port
from metrobus.settings import Settings
from tests.helpers import Processes, assert_balanced, expected_outcomes, stats, wait_until

ROOT = Path(__file__).resolve().parent.parent
STOPS = ("busdriver", "AddEmail", "WhiteList", "Log")


async def test_ten_thousand_messages_through_four_processes_all_accounted_for(
    procs: Processes, settings: Settings, redis_client: aioredis.Redis
) -> None:
    seeded = procs.cli("seed", "--accounts", "30000", "--seed", "7")
    assert seeded.returncode == 0, seeded.stderr
    assert "seeded 30,000 account emails" in seeded.stderr
    for name in STOPS:
        procs.start(name, name)
    pushed = procs.cli("push", "--rate", "0", "--count", "10000", "--seed", "3")
    assert pushed.returncode == 0, pushed.stderr
    assert "sent 10,000 messages" in pushed.stderr

    async def drained() -> bool:
        p = (await stats(redis_client, settings))["pipeline"]
        return p["pushed"] == 10_000 and p["in_flight"] == 0

    try:
        await wait_until(drained, 180, "the pipeline to drain 10,000 messages")
    except AssertionError:
        raise AssertionError("\n".join(procs.stderr(s) for s in STOPS)) from None
    exits = procs.terminate()
    for name, (code, seconds) in exits.items():
        assert code == 0, (name, code, procs.stderr(name))
        assert seconds < 10, (name, seconds)

    doc = await stats(redis_client, settings)
    assert_balanced(doc)
    s, p = doc["stops"], doc["pipeline"]
    expected = await expected_outcomes(settings, redis_client, 10_000)
    assert p["pushed"] == 10_000
    assert s["AddEmail"]["dropped"] == expected["AddEmail"]
    assert s["WhiteList"]["dropped"] == expected["WhiteList"]
    assert p["delivered"] == s["Log"]["delivered"] == expected["delivered"]
    assert p["errors"] == 0
    assert s["busdriver"]["out"] == 10_000
    assert s["WhiteList"]["in"] == s["AddEmail"]["out"]
    assert doc["counter"][settings.topic("Source")] == 10_000

    lines = (procs.tmp / "Log.out").read_bytes().splitlines()
    assert len(lines) == expected["delivered"]
    delivered = [orjson.loads(line) for line in lines]
    routed = [d for d in delivered if d["header"]["original_route"] != ["Log"]]
    assert all(d["payload"]["whitelist"] is True and "@" in d["payload"]["email"] for d in routed)
    assert all([h["stop"] for h in d["header"]["historical_route"]] == list(STOPS) for d in routed)
    assert p["e2e_latency_ms"]["count"] == expected["delivered"]
    assert 0 < p["e2e_latency_ms"]["p50"] <= p["e2e_latency_ms"]["p99"]

    shown = procs.cli("stats", "--json")
    assert json.loads(shown.stdout)["pipeline"]["pushed"] == 10_000


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def test_replicas_spread_partitions_restart_crashed_workers_and_balance(
    procs: Processes, settings: Settings, redis_client: aioredis.Redis
) -> None:
    assert procs.cli("seed", "--accounts", "3000", "--seed", "1").returncode == 0
    port = free_port()
    for name in ("busdriver", "AddEmail", "Log"):
        procs.start(name, name)
    procs.start("WhiteList", "WhiteList", "--replicas", "3", "--http-port", str(port))
    url = f"http://127.0.0.1:{port}/stats"

    def whitelist() -> dict[str, Any]:
        try:
            return get_json(url)["stops"].get("WhiteList", {"workers": 0})
        except OSError:
            return {"workers": 0}

    async def spread() -> bool:
        w = whitelist()
        parts = [a["partitions"] for a in w.get("assignments", {}).values()]
        every = sorted(p for part in parts for p in part)
        return len(parts) == 3 and all(parts) and every == list(range(6))

    await wait_until(spread, 90, "3 WhiteList workers sharing the 6 partitions")
    pushed = procs.cli("push", "--rate", "0", "--count", "2000", "--seed", "5")
    assert pushed.returncode == 0, pushed.stderr

    victim = next(iter(whitelist()["assignments"].values()))["pid"]
    os.kill(victim, signal.SIGKILL)
    pushed = procs.cli("push", "--rate", "0", "--count", "1000", "--seed", "6")
    assert pushed.returncode == 0, pushed.stderr

    async def restarted_and_drained() -> bool:
        doc = get_json(url)
        pids = {a["pid"] for a in doc["stops"].get("WhiteList", {}).get("assignments", {}).values()}
        p = doc["pipeline"]
        return len(pids - {victim}) == 3 and p["pushed"] == 3000 and p["in_flight"] <= 0

    await wait_until(restarted_and_drained, 120, "a restarted worker and a drained pipeline")
    exits = procs.terminate()
    assert all(code == 0 for code, _ in exits.values()), exits
    doc = await stats(redis_client, settings)
    assert_balanced(doc, duplicates_possible=True)
    assert doc["pipeline"]["pushed"] == 3000
    # the SIGKILLed worker may have processed some records again: never fewer
    assert doc["stops"]["WhiteList"]["in"] >= doc["stops"]["AddEmail"]["out"]
