"""The baseline: minimal hand-written aiokafka loops doing the same work as the
built-in enrich and filter stops, with the same client settings as
``metrobus.bus`` (so the comparison measures the framework, not the config).

Per batch: ``getmany(max_records=1000)`` → ``orjson.loads`` each value → one
MGET (enrich) or one SMISMEMBER (filter) → set the field / drop → pop the route,
append the hop → ``orjson.dumps`` → ``producer.send`` each → await every ack →
commit. No dead letters, no validation beyond what the work needs, no stats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


@dataclass
class Progress:
    """Filled by the loop: first record seen, last record done (perf_counter)."""

    expect: int
    on_first: Callable[[], None] | None = None
    on_done: Callable[[], None] | None = None
    seen: int = 0
    forwarded: int = 0
    dropped: int = 0
    batches: int = 0
    first: float | None = None
    last: float | None = None
    batch_sizes: list[int] = field(default_factory=list)


def _clients(
    bootstrap: str, redis_url: str, topic: str, group: str, session_timeout_ms: int
) -> tuple[AIOKafkaConsumer, AIOKafkaProducer, aioredis.Redis]:
    consumer = AIOKafkaConsumer(  # the settings of metrobus.bus.make_consumer
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1000,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(session_timeout_ms // 5, 100),
        max_poll_interval_ms=600_000,
        request_timeout_ms=20_000,
        retry_backoff_ms=200,
    )
    producer = AIOKafkaProducer(  # the settings of metrobus.bus.make_producer
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=20_000,
        retry_backoff_ms=200,
    )
    redis = aioredis.from_url(redis_url, decode_responses=True)
    return consumer, producer, redis


async def run(
    kind: str,
    *,
    bootstrap: str,
    redis_url: str,
    topic: str,
    out_topic: str,
    group: str,
    prefix: str,
    progress: Progress,
    session_timeout_ms: int = 10_000,
) -> Progress:
    """Consume ``topic`` until ``progress.expect`` records are done (enrich or filter)."""
    consumer, producer, redis = _clients(bootstrap, redis_url, topic, group, session_timeout_ms)
    await producer.start()
    await consumer.start()
    step = _enrich_batch if kind == "enrich" else _filter_batch
    try:
        while progress.seen < progress.expect:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            records = [r for part in batch.values() for r in part]
            if not records:
                continue
            if progress.first is None:
                progress.first = time.perf_counter()
                if progress.on_first:
                    progress.on_first()
            futures = await step(records, redis, producer, out_topic, prefix, progress)
            await asyncio.gather(*futures)  # every ack before the commit
            await consumer.commit()
            progress.seen += len(records)
            progress.batches += 1
            progress.batch_sizes.append(len(records))
        progress.last = time.perf_counter()
        if progress.on_done:
            progress.on_done()
    finally:
        await consumer.stop()
        await producer.stop()
        await redis.aclose()
    return progress


async def _enrich_batch(
    records: list[Any],
    redis: aioredis.Redis,
    producer: AIOKafkaProducer,
    out_topic: str,
    prefix: str,
    progress: Progress,
) -> list[Any]:
    messages = [orjson.loads(r.value) for r in records]
    emails = await redis.mget([f"{prefix}email:{m['payload']['account_number']}" for m in messages])
    at = time.time_ns() // 1_000_000
    futures = []
    for record, message, email in zip(records, messages, emails, strict=True):
        if email is None:
            progress.dropped += 1
            continue
        message["payload"]["email"] = email
        header = message["header"]
        header["route"].pop(0)
        header["historical_route"].append({"stop": "AddEmail", "at": at})
        futures.append(await producer.send(out_topic, orjson.dumps(message), key=record.key))
        progress.forwarded += 1
    return futures


async def _filter_batch(
    records: list[Any],
    redis: aioredis.Redis,
    producer: AIOKafkaProducer,
    out_topic: str,
    prefix: str,
    progress: Progress,
) -> list[Any]:
    messages = [orjson.loads(r.value) for r in records]
    members = await redis.smismember(
        f"{prefix}whitelist", [m["payload"]["email"] for m in messages]
    )
    at = time.time_ns() // 1_000_000
    futures = []
    for record, message, member in zip(records, messages, members, strict=True):
        if not member:
            progress.dropped += 1
            continue
        message["payload"]["whitelist"] = True
        header = message["header"]
        header["route"].pop(0)
        header["historical_route"].append({"stop": "WhiteList", "at": at})
        futures.append(await producer.send(out_topic, orjson.dumps(message), key=record.key))
        progress.forwarded += 1
    return futures
