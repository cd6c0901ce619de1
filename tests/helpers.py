"""Test helpers: run stops in-process, produce and read topics, wait for counts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from metrobus.host import async_run
from metrobus.runner import StopRunner
from metrobus.settings import Settings, route_order
from metrobus.stats import read_stats

ROOT = Path(__file__).resolve().parent.parent


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` every 0.2 s; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *stops: str, **kwargs: Any
) -> AsyncIterator[list[StopRunner]]:
    """Run ``stops`` in this event loop; on exit stop them as SIGTERM would."""
    stopping = asyncio.Event()
    runners: list[StopRunner] = []

    async def one(name: str) -> None:
        runners.append(await async_run(settings, name, stopping=stopping, **kwargs))

    tasks = [asyncio.create_task(one(s)) for s in stops]
    try:
        yield runners
    finally:
        stopping.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        errors = [r for r in done if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


async def produce(
    settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        acks = [await producer.send(settings.topic(topic), v, key=k) for k, v in records]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, expect: int, timeout: float = 30) -> list[Any]:
    """Every record of ``topic`` from the beginning, once at least ``expect`` are there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        name = settings.topic(topic)
        partitions = None
        deadline = time.monotonic() + timeout
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(name)
            if not partitions:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
        assert partitions, f"topic {name} does not exist"
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def stats(client: aioredis.Redis, settings: Settings) -> dict[str, Any]:
    return await read_stats(client, settings.redis_key(""), route_order(settings))


def assert_balanced(doc: dict[str, Any], duplicates_possible: bool = False) -> None:
    """DESIGN §3: per stop in = out + delivered + dropped + errors; pipeline likewise.

    After a crash, at-least-once may add duplicates downstream, never losses:
    then the pipeline's outcomes may exceed what was pushed.
    """
    for name, s in doc["stops"].items():
        assert s["in"] == s["out"] + s["delivered"] + s["dropped"] + s["errors"], (name, s)
    if not any(s["kind"] == "router" for s in doc["stops"].values()):
        return  # no router: nothing was "pushed", only the per-stop law applies
    p = doc["pipeline"]
    outcomes = p["delivered"] + p["dropped"] + p["errors"]
    if duplicates_possible:
        assert outcomes >= p["pushed"], p
    else:
        assert outcomes == p["pushed"], p


class Processes:
    """`metrobus` subprocesses of one test, all in its namespace; stopped like a user would."""

    def __init__(self, tmp: Path, namespace: str) -> None:
        self.tmp, self.namespace = tmp, namespace
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "metrobus",
            *args,
            "--namespace",
            self.namespace,
            "--config",
            str(ROOT / "metrobus.toml"),
        ]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
        err = open(self.tmp / f"{name}.err", "wb")  # noqa: SIM115
        proc = subprocess.Popen(self.argv("run", *args), stdout=out, stderr=err)
        self.procs[name] = proc
        return proc

    def terminate(self, timeout: float = 10) -> dict[str, tuple[int | None, float]]:
        """SIGTERM each process; (exit code, seconds it took) per name."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        started, result = time.monotonic(), {}
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(timeout - (time.monotonic() - started), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            result[name] = (proc.returncode, time.monotonic() - started)
        return result

    def stderr(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")[-3000:]


async def expected_outcomes(settings: Settings, client: aioredis.Redis, n: int) -> dict[str, int]:
    """What the pipeline must do with the pushed messages, worked out from the seeded data."""
    pushed = [orjson.loads(r.value) for r in await read_topic(settings, "Source", n)]
    assert len(pushed) == n
    ns = settings.redis_key("")
    outcome = {"AddEmail": 0, "WhiteList": 0, "delivered": 0}
    altabc = [m for m in pushed if m["message_type_code"] == "ALTABC"]
    emails = await client.mget([f"{ns}email:{m['account_number']}" for m in altabc])
    listed = await client.smismember(f"{ns}whitelist", [e or "" for e in emails])
    for email, member in zip(emails, listed, strict=True):
        if email is None:
            outcome["AddEmail"] += 1
        elif not member:
            outcome["WhiteList"] += 1
        else:
            outcome["delivered"] += 1
    outcome["delivered"] += n - len(altabc)
    return outcome
