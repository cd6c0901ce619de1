"""``metrobus push``: the original pusher's messages, paced evenly at a rate.

Each record is ``{x, message_type_code, account_number}`` keyed by its account
number (partitions fill evenly, per-account order holds end to end). Sends are
awaited in chunks, so the achieved rate is what the broker acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import orjson

from metrobus import bus
from metrobus.progress import Reporter
from metrobus.seed import FIRST_ACCOUNT, account_range
from metrobus.settings import Settings
from metrobus.store import connect, wait_for_redis

TICK = 0.01  # pace in 10 ms slices: smooth enough, cheap enough


@dataclass(frozen=True)
class PushResult:
    sent: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def make_message(x: int, rng: random.Random, last_account: int, altabc_share: float) -> bytes:
    code = "ALTABC" if rng.random() < altabc_share else "XYZDEF"
    account = rng.randint(FIRST_ACCOUNT, last_account)
    return orjson.dumps({"x": x, "message_type_code": code, "account_number": account})


async def push(
    settings: Settings,
    *,
    rate: float,
    count: int,
    topic: str | None = None,
    duration: float | None = None,
    altabc_share: float = 0.8,
    seed: int | None = None,
    stopping: asyncio.Event | None = None,
    progress: bool = True,
) -> PushResult:
    """Send ``count`` messages (0: until stopped or ``duration``) at ``rate``/s (0: max)."""
    stopping = stopping or asyncio.Event()
    target = settings.topic(topic or settings.source_topic)
    client = connect(settings.redis_url)
    try:
        await wait_for_redis(client, settings.redis_url, settings.connect_timeout)
        last_account = await account_range(client, settings.redis_key(""))
    finally:
        await client.aclose()
    await bus.ensure_topics(
        settings.bootstrap, [target], settings.partitions, settings.connect_timeout
    )
    producer = bus.make_producer(settings.bootstrap)
    await bus.start_with_retry(producer, settings.bootstrap, settings.connect_timeout, "producer")
    rng = random.Random(seed)
    sent = errors = 0
    started = time.monotonic()
    deadline = started + duration if duration else None
    reporter = Reporter(f"push → {target}", count or None) if progress else None
    try:
        if reporter is not None:
            reporter.__enter__()
        while not stopping.is_set() and (not count or sent < count):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            due = int((now - started) * rate) + 1 if rate else sent + 1000
            chunk = min(due - sent, 2000, (count - sent) if count else 2000)
            if chunk <= 0:
                await asyncio.sleep(TICK)
                continue
            acks = []
            refused = 0
            for i in range(chunk):
                value = make_message(sent + i, rng, last_account, altabc_share)
                key = value[value.rindex(b":") + 1 : -1]  # the account number, as text
                try:
                    acks.append(await producer.send(target, value, key=key))
                except bus.KafkaError:
                    refused += 1  # e.g. the broker is gone and the buffer is full
            results = await asyncio.gather(*acks, return_exceptions=True)
            failed = refused + sum(1 for r in results if isinstance(r, BaseException))
            errors += failed
            sent += chunk - failed
            if reporter is not None:
                reporter.advance(chunk - failed)
    finally:
        if reporter is not None:
            reporter.__exit__(None, None, None)
        await producer.stop()
    return PushResult(sent, errors, time.monotonic() - started)
