"""Counters that follow the messages, flushed to Redis in one pipelined round trip.

Each process counts locally and flushes about once a second, *before* it
commits the offsets those counts cover: a crash may count a replayed message
twice, never lose a count. Readers sum every process of every stop, so
``/stats`` is cluster-wide. Latency is kept as log-spaced histograms, which sum
across processes exactly.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import socket
import time
from collections import Counter
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from metrobus.store import TRANSIENT_REDIS

log = logging.getLogger(__name__)

# Histogram bucket upper bounds in ms: 0.05 ms … ~2 min, 25 % apart.
BOUNDS = [0.05 * 1.25**i for i in range(67)]
DEAD_LETTER_KEEP = 50
WORKER_STALE_S = 15.0
COUNT_FIELDS = ("in", "out", "dropped", "errors", "delivered")


def bucket(ms: float) -> int:
    return min(bisect.bisect_left(BOUNDS, ms), len(BOUNDS) - 1)


def percentiles(hist: dict[int, int]) -> dict[str, float]:
    """p50/p90/p99 (bucket upper bounds, so at most 25 % high) and the count."""
    total = sum(hist.values())
    out: dict[str, float] = {"p50": 0.0, "p90": 0.0, "p99": 0.0, "count": total}
    if not total:
        return out
    ordered = sorted(hist.items())
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        rank, seen = math.ceil(q * total), 0
        for idx, n in ordered:
            seen += n
            if seen >= rank:
                out[name] = round(BOUNDS[idx], 3)
                break
    return out


class Keys:
    """Redis key names, inside the namespace."""

    def __init__(self, prefix: str) -> None:
        self.stops = f"{prefix}metrobus:stops"
        self.edges = f"{prefix}metrobus:edges"
        self.dead = f"{prefix}metrobus:deadletters"
        self.e2e = f"{prefix}metrobus:e2e"
        self.counter = f"{prefix}counter"  # the original metrobus hash: topic -> consumed
        self._prefix = prefix

    def counts(self, stop: str) -> str:
        return f"{self._prefix}metrobus:stats:{stop}"

    def latency(self, stop: str) -> str:
        return f"{self._prefix}metrobus:latency:{stop}"

    def workers(self, stop: str) -> str:
        return f"{self._prefix}metrobus:workers:{stop}"


class StopStats:
    """One process's counts for the stop it hosts, since the last flush."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, stop: str, kind: str, topic: str, worker_id: str
    ) -> None:
        self.client, self.keys = client, Keys(prefix)
        self.stop, self.kind, self.topic = stop, kind, topic
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}" + (
            f"#{worker_id}" if worker_id else ""
        )
        self.partitions: list[int] = []
        self.flushed_at = time.monotonic()
        self.totals: Counter[str] = Counter()  # since start, for logs and tests
        self._reset()

    def _reset(self) -> None:
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.edges: Counter[str] = Counter()
        self.latency: Counter[int] = Counter()
        self.e2e: Counter[int] = Counter()
        self.dead: list[bytes] = []

    def _take(self) -> tuple[Any, ...]:
        taken = (self.counts, self.reasons, self.edges, self.latency, self.e2e, self.dead)
        self._reset()
        return taken

    def _give_back(self, taken: tuple[Any, ...]) -> None:
        counts, reasons, edges, latency, e2e, dead = taken
        self.counts.update(counts)
        self.reasons.update(reasons)
        self.edges.update(edges)
        self.latency.update(latency)
        self.e2e.update(e2e)
        self.dead[:0] = dead

    def count(self, field: str, n: int = 1) -> None:
        self.counts[field] += n
        self.totals[field] += n

    def dropped(self, reason: str) -> None:
        self.count("dropped")
        self.reasons[reason] += 1

    def forwarded(self, to: str) -> None:
        self.count("out")
        self.edges[f"{self.stop}>{to}"] += 1

    def delivered(self, created_at: int, now: int) -> None:
        self.count("delivered")
        self.edges[f"{self.stop}>(delivered)"] += 1
        if created_at:
            self.e2e[bucket(max(now - created_at, 0))] += 1

    def error(self, summary: dict[str, Any]) -> None:
        self.count("errors")
        self.dead.append(orjson.dumps(summary))

    def processed(self, n: int, ms: float) -> None:
        self.latency[bucket(ms)] += n

    async def flush(self) -> bool:
        """Send pending counts in one MULTI/EXEC round trip; False (counts kept) on failure.

        The counts are taken before the await, so a batch finishing meanwhile
        is counted in the next flush, and a failed flush gives them back.
        """
        k, now = self.keys, time.monotonic()
        taken = self._take()
        counts, reasons, edges, latency, e2e, dead = taken
        seen = {
            "pid": os.getpid(),
            "partitions": self.partitions,
            "seen": time.time(),
            "rate_in": round(counts["in"] / max(now - self.flushed_at, 1e-3), 1),
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(k.stops, self.stop)
        pipe.hset(f"{k.stops}:kind", self.stop, self.kind)
        pipe.hset(k.workers(self.stop), self.worker_id, orjson.dumps(seen))
        for field, n in counts.items():
            pipe.hincrby(k.counts(self.stop), field, n)
        for reason, n in reasons.items():
            pipe.hincrby(k.counts(self.stop), f"drop:{reason}", n)
        if counts["in"]:
            pipe.hincrby(k.counter, self.topic, counts["in"])
        for edge, n in edges.items():
            pipe.hincrby(k.edges, edge, n)
        for idx, n in latency.items():
            pipe.hincrby(k.latency(self.stop), str(idx), n)
        for idx, n in e2e.items():
            pipe.hincrby(k.e2e, str(idx), n)
        if dead:
            pipe.lpush(k.dead, *dead)
            pipe.ltrim(k.dead, 0, DEAD_LETTER_KEEP - 1)
        try:
            await pipe.execute()
        except (*TRANSIENT_REDIS, RedisError) as exc:
            log.warning("stop %s: stats flush failed, kept for the next one: %s", self.stop, exc)
            self._give_back(taken)
            return False
        self.flushed_at = now
        return True

    async def leave(self) -> None:
        """Forget this worker (clean shutdown) so worker counts stay truthful."""
        with contextlib.suppress(*TRANSIENT_REDIS, RedisError):
            await self.client.hdel(self.keys.workers(self.stop), self.worker_id)


def _hist(raw: dict[str, str]) -> dict[int, int]:
    return {int(k): int(v) for k, v in raw.items()}


async def read_stats(
    client: aioredis.Redis, prefix: str = "", route_order: list[str] | None = None
) -> dict[str, Any]:
    """The cluster-wide stats document served by ``/stats`` and ``metrobus stats``."""
    k = Keys(prefix)
    names: list[str] = sorted(str(n) for n in await client.smembers(k.stops))
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(f"{k.stops}:kind")
    pipe.hgetall(k.edges)
    pipe.hgetall(k.e2e)
    pipe.lrange(k.dead, 0, 19)
    pipe.hgetall(k.counter)
    for name in names:
        pipe.hgetall(k.counts(name))
        pipe.hgetall(k.latency(name))
        pipe.hgetall(k.workers(name))
    kinds, edges, e2e, dead, counter, *per_stop = await pipe.execute()
    now = time.time()
    stops: dict[str, Any] = {}
    for i, name in enumerate(names):
        counts, latency, workers = per_stop[3 * i : 3 * i + 3]
        entry: dict[str, Any] = {"kind": kinds.get(name, "?")}
        entry.update({f: int(counts.get(f, 0)) for f in COUNT_FIELDS})
        entry["drop_reasons"] = {f[5:]: int(v) for f, v in counts.items() if f.startswith("drop:")}
        live = {
            wid: w
            for wid, w in ((wid, orjson.loads(raw)) for wid, raw in workers.items())
            if now - w.get("seen", 0) < WORKER_STALE_S
        }
        entry["workers"] = len(live)
        entry["rate_in"] = round(sum(w.get("rate_in", 0.0) for w in live.values()), 1)
        entry["assignments"] = {
            wid: {"pid": w["pid"], "partitions": w["partitions"]} for wid, w in sorted(live.items())
        }
        entry["latency_ms"] = percentiles(_hist(latency))
        stops[name] = entry
    order = [s for s in (route_order or []) if s in stops]
    order += [s for s in names if s not in order]
    pushed = sum(s["in"] for s in stops.values() if s["kind"] == "router")
    totals = {f: sum(s[f] for s in stops.values()) for f in ("delivered", "dropped", "errors")}
    return {
        "namespace": prefix.rstrip(":"),
        "generated_at": int(now * 1000),
        "route_order": order,
        "stops": stops,
        "edges": {e: int(n) for e, n in edges.items()},
        "pipeline": {
            "pushed": pushed,
            **totals,
            # Each process flushes on its own clock, so a stop's counts can run
            # up to a second ahead of its upstream's: "ahead" is that skew (or,
            # after a crash, replayed duplicates); in flight never goes negative.
            "in_flight": max(pushed - sum(totals.values()), 0),
            "ahead": max(sum(totals.values()) - pushed, 0),
            "e2e_latency_ms": percentiles(_hist(e2e)),
        },
        "dead_letters": [orjson.loads(d) for d in dead],
        "counter": {t: int(n) for t, n in counter.items()},
    }


async def reset_stats(client: aioredis.Redis, prefix: str = "") -> None:
    """Delete every stats key of the namespace (``metrobus stats --reset``)."""
    k = Keys(prefix)
    names = [str(n) for n in await client.smembers(k.stops)]
    keys = [k.stops, f"{k.stops}:kind", k.edges, k.e2e, k.dead, k.counter]
    for name in names:
        keys += [k.counts(name), k.latency(name), k.workers(name)]
    await client.delete(*keys)
