"""What every benchmark shares: settings per namespace, seeding, pre-filling topics,
child processes that are always stopped, stats sampling, tables and result files.

Services come from the environment (``METROBUS_BOOTSTRAP``, ``METROBUS_REDIS_URL``),
which ``scripts/bench`` exports after starting them with ``scripts/services.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from metrobus import seed as seeding
from metrobus.settings import Settings, load_settings
from metrobus.store import connect

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "metrobus.toml"


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- settings and namespaces ----------------------------------------------------
def new_namespace(tag: str) -> str:
    """A fresh namespace: its own topics, consumer groups and Redis keys."""
    return f"bench{uuid.uuid4().hex[:6]}-{tag}"


def settings_for(namespace: str, **overrides: Any) -> Settings:
    """The repository's pipeline (metrobus.toml) in ``namespace``, services from the env."""
    return load_settings(CONFIG, os.environ, namespace=namespace, connect_timeout=30.0, **overrides)


def broker_kind() -> str:
    return os.environ.get("METROBUS_TEST_BROKER_KIND", "external")


async def seed_namespace(
    settings: Settings, accounts: int, rng_seed: int = 1
) -> tuple[seeding.SeedResult, dict[int, str]]:
    """``metrobus seed`` into the namespace; also returns account → email (same rng)."""
    client = connect(settings.redis_url)
    try:
        result = await seeding.seed(
            client, settings.redis_key(""), accounts, rng_seed=rng_seed, progress=False
        )
    finally:
        await client.aclose()
    emails, _whitelist, _last = seeding.generate(accounts, random.Random(rng_seed))
    return result, emails


async def forget_namespace(settings: Settings) -> None:
    """Best effort: delete the namespace's Redis keys and topics so services stay lean."""
    client = connect(settings.redis_url)
    try:
        batch: list[str] = []
        async for key in client.scan_iter(match=f"{settings.namespace}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
    except Exception as exc:
        say(f"could not delete Redis keys of {settings.namespace}: {exc}")
    finally:
        await client.aclose()
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=15_000)
    try:
        await admin.start()
        topics = [t for t in await admin.list_topics() if t.startswith(settings.namespace + ".")]
        if topics:
            await asyncio.wait_for(admin.delete_topics(topics), 20)
    except Exception as exc:
        say(f"could not delete topics of {settings.namespace}: {type(exc).__name__} {exc}")
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def produce_all(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]], chunk: int = 5000
) -> float:
    """Produce (key, value) pairs, acknowledged in chunks; returns the seconds taken."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= chunk:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# -- child processes ----------------------------------------------------------------
class Child:
    """A child process in its own session; ``stop()`` is bounded and always reaps it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: Any = subprocess.DEVNULL,
        log_dir: Path,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=self._log,
            start_new_session=True,
        )
        self._terminated = False
        _CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """One SIGTERM (metrobus drains and exits 0; a second one makes it exit at once)."""
        if self.alive() and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM once, then SIGKILL (the whole session) after ``grace`` s."""
        if self.alive():
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                say(f"{self.name} (pid {self.pid}) ignored SIGTERM for {grace:g}s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)  # its own session: pgid == pid
                self.proc.wait(10)
        self._log.close()
        with contextlib.suppress(ValueError):
            _CHILDREN.remove(self)
        return self.proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


_CHILDREN: list[Child] = []


def stop_all_children() -> None:
    for child in list(_CHILDREN):
        with contextlib.suppress(Exception):
            child.stop(grace=5.0)


def metrobus_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "metrobus", *args]


# -- CPU accounting (no profiler: what each process really spent) ----------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc), else None."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def service_pids() -> dict[str, int]:
    """The broker's and Redis' pids, from the state ``scripts/bench`` exports."""
    state = os.environ.get("METROBUS_SERVICES_STATE")
    if not state:
        return {}
    try:
        rec = orjson.loads((Path(state) / "services.json").read_bytes())
    except (OSError, ValueError):
        return {}
    pids = {}
    if rec.get("redis", {}).get("pid"):
        pids["redis"] = int(rec["redis"]["pid"])
    if rec.get("tansu", {}).get("pid"):
        pids["broker"] = int(rec["tansu"]["pid"])
    elif rec.get("kafka", {}).get("dir"):
        with contextlib.suppress(OSError, ValueError):
            pids["broker"] = int((Path(rec["kafka"]["dir"]) / "kafka.pid").read_text().split()[0])
    return pids


class CpuMeter:
    """CPU seconds spent by named pids between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.begin: dict[str, float | None] = {}
        self.last: dict[str, float | None] = {}
        self.wall = 0.0

    def start(self) -> None:
        self.begin = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.last = dict(self.begin)
        self.wall = time.monotonic()

    def add(self, name: str, pid: int) -> None:
        """A process started after ``start()`` (counted from zero)."""
        self.pids[name] = pid
        self.begin[name] = self.last[name] = 0.0

    def sample(self) -> None:
        """Call often: a process that exits keeps its last value (its /proc entry goes)."""
        for k, p in self.pids.items():
            if (now := cpu_seconds(p)) is not None:
                self.last[k] = now

    def stop(self) -> dict[str, Any]:
        self.sample()
        wall = time.monotonic() - self.wall
        used = {}
        for k in self.pids:
            end, begin = self.last.get(k), self.begin.get(k)
            used[k] = round(end - begin, 2) if end is not None and begin is not None else None
        total = sum(v for v in used.values() if v)
        return {
            "wall_s": round(wall, 2),
            "cpu_s": used,
            "cpu_total_s": round(total, 2),
            "cores_busy": round(total / wall, 2) if wall else None,
        }


# -- numbers --------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max-min)/median) of repeated measurements."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    med = statistics.median(vals)
    return {
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "spread_pct": round(100 * (max(vals) - min(vals)) / med, 1) if med else 0.0,
        "n": len(vals),
    }


def crossing(samples: Sequence[tuple[float, float]], target: float) -> float | None:
    """The time at which a cumulative series (t, value) reaches ``target`` (interpolated)."""
    prev: tuple[float, float] | None = None
    for t, v in samples:
        if v >= target:
            if prev is None or v == prev[1]:
                return t
            t0, v0 = prev
            return t0 + (t - t0) * (target - v0) / (v - v0)
        prev = (t, v)
    return None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return float(sorted_values[rank - 1])


def fmt(value: Any, digits: int = 0) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


# -- machine and results -----------------------------------------------------------
def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "load_avg_at_start": load_avg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": rev + ("+dirty-src" if dirty else ""),
        "broker": broker_kind(),
        "bootstrap": os.environ.get("METROBUS_BOOTSTRAP"),
        "versions": {p: version(p) for p in ("aiokafka", "redis", "hiredis", "orjson")},
    }


def write_result(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)
    return path


def chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


async def redis_client(settings: Settings) -> aioredis.Redis:
    return connect(settings.redis_url)


def run_bounded(coro_factory: Callable[[], Any], timeout: float) -> Any:
    """asyncio.run with an overall timeout (a benchmark never hangs the caller)."""

    async def main() -> Any:
        return await asyncio.wait_for(coro_factory(), timeout)

    return asyncio.run(main())
