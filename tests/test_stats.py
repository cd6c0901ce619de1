"""Counters: percentiles, flushes that race batches, cluster-wide sums."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from metrobus.stats import BOUNDS, StopStats, bucket, percentiles, read_stats


def test_percentiles_are_bucket_upper_bounds() -> None:
    hist = {bucket(1.0): 50, bucket(10.0): 40, bucket(100.0): 10}
    p = percentiles(hist)
    assert p["count"] == 100
    assert 1.0 <= p["p50"] < 1.25
    assert 10.0 <= p["p90"] < 12.5
    assert 100.0 <= p["p99"] < 125.0
    assert percentiles({}) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "count": 0}
    assert bucket(10**9) == len(BOUNDS) - 1


async def test_concurrent_flushes_count_each_message_once(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    stats = StopStats(redis_client, f"{namespace}:", "S", "enrich", "S", "w")
    stats.count("in", 100)
    stats.dropped("why")
    first = asyncio.create_task(stats.flush())
    await asyncio.sleep(0)  # the first flush has taken its counts and awaits Redis
    stats.count("in", 50)  # a batch finishing meanwhile
    assert all(await asyncio.gather(first, stats.flush(), stats.flush()))
    doc = await read_stats(redis_client, f"{namespace}:")
    s = doc["stops"]["S"]
    assert (s["in"], s["dropped"], s["drop_reasons"]) == (150, 1, {"why": 1})
    assert doc["counter"] == {"S": 150}
    assert s["workers"] == 1


async def test_a_failed_flush_keeps_its_counts(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    stats = StopStats(dead, f"{namespace}:", "S", "filter", "S", "w")
    stats.count("in", 7)
    stats.forwarded("Log")
    assert not await stats.flush()
    await dead.aclose()
    stats.client = redis_client
    assert await stats.flush()
    doc = await read_stats(redis_client, f"{namespace}:")
    assert (doc["stops"]["S"]["in"], doc["stops"]["S"]["out"]) == (7, 1)
    assert doc["edges"] == {"S>Log": 1}
