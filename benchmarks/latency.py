"""End-to-end latency of the seed pipeline at a fixed offered rate (default 5,000 msg/s).

The same four ``metrobus run`` processes as ``pipeline``, in a fresh namespace,
with ``metrobus push --rate 5000 --duration 30``. After a warm-up (5 s after
the push process starts) the namespace's stats are reset with
``metrobus.stats.reset_stats``, so ``read_stats()["pipeline"]["e2e_latency_ms"]``
covers only the messages delivered after it. That histogram is measured from
the router's wrap (``created_at``) to the sink's count, and its percentiles are
bucket upper bounds (≤ 25 % high).

The sink writes to a file (not /dev/null) so that, after the run, every
delivered message's hops can be read back: exact percentiles of router→sink,
of each hop, and of push→sink, joining the sink's lines with the Source
records' Kafka timestamps (the producer's send time) on ``payload.x``.

DESIGN §7: p99 end-to-end ≤ 50 ms at 5,000 messages/s offered.

    python -m benchmarks latency [--rate R] [--duration S] [--warmup S] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import common
from benchmarks.common import Child, say
from benchmarks.pipeline import STOPS, Pipeline, cpu_per_message, outcomes, push_summary

TARGET_P99_MS = 50.0


async def source_timestamps(settings: Any, timeout: float = 60.0) -> dict[int, int]:
    """payload.x → the Source record's timestamp (ms), reading the topic from the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.topic(settings.source_topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    stamps: dict[int, int] = {}
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not parts:
            await consumer._client.force_metadata_update()
            parts = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in parts]
            if all(pos >= ends[tp] for pos, tp in zip(positions, parts, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for r in records:
                    stamps[orjson.loads(r.value)["x"]] = r.timestamp
    finally:
        await consumer.stop()
    return stamps


async def broker_floor(
    settings: Any, messages: int = 1000, interval: float = 0.005
) -> dict[str, Any]:
    """One Kafka hop with nothing else to do: send → ``getmany`` with metrobus' client settings.

    One record every ``interval`` s to a fresh 6-partition topic, each carrying its
    send time; the latency floor every stop-to-stop hop pays on this broker.
    """
    from metrobus import bus

    topic = settings.topic("floor")
    await bus.ensure_topics(settings.bootstrap, [topic], settings.partitions, 30)
    producer = bus.make_producer(settings.bootstrap)
    consumer = bus.make_consumer(
        settings.bootstrap, topic, settings.group("floor"), 1000, None, settings.session_timeout_ms
    )
    await producer.start()
    await consumer.start()
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)

        async def send() -> None:
            for i in range(messages):
                await producer.send(topic, repr(time.time()).encode(), key=str(i).encode())
                await asyncio.sleep(interval)

        sender = asyncio.ensure_future(send())
        deadline = time.monotonic() + messages * interval + 30
        while len(latencies) < messages and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            now = time.time()
            latencies += [(now - float(r.value)) * 1000 for rs in batch.values() for r in rs]
        sender.cancel()
    finally:
        await consumer.stop()
        await producer.stop()
    latencies.sort()
    return {
        "count": len(latencies),
        "p50": round(common.percentile(latencies, 0.5), 2),
        "p90": round(common.percentile(latencies, 0.9), 2),
        "p99": round(common.percentile(latencies, 0.99), 2),
        "interval_s": interval,
    }


def sink_latencies(sink: Path, since_ms: int, stamps: dict[int, int]) -> dict[str, Any]:
    """Exact percentiles from the sink's lines (messages created after ``since_ms``)."""
    series: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        series.setdefault(name, []).append(value)

    lines = 0
    with sink.open("rb") as f:
        for line in f:
            env = orjson.loads(line)
            header = env["header"]
            created = header["created_at"]
            if created < since_ms:
                continue
            lines += 1
            hops = {h["stop"]: h["at"] for h in header["historical_route"]}
            via = "ALTABC (4 stops)" if "AddEmail" in hops else "other (router → Log)"
            log_at = hops.get("Log")
            if log_at is None:
                continue
            add(f"router → Log hop, {via}", log_at - created)
            add("router → Log hop, all", log_at - created)
            sent = stamps.get(env["payload"].get("x"))
            if sent is not None:
                add("push send → Log hop, all", log_at - sent)
                add("push send → router", hops.get("busdriver", created) - sent)
            prev = "busdriver"
            for stop in ("AddEmail", "WhiteList", "Log"):
                if stop in hops and prev in hops:
                    add(f"hop {prev} → {stop}", hops[stop] - hops[prev])
                    prev = stop
    out: dict[str, Any] = {"messages": lines}
    for name, values in sorted(series.items()):
        values.sort()
        out[name] = {
            "count": len(values),
            "p50": common.percentile(values, 0.5),
            "p90": common.percentile(values, 0.9),
            "p99": common.percentile(values, 0.99),
            "max": values[-1],
        }
    return out


async def run_round(
    variant: str,
    rate: float,
    duration: float,
    warmup: float,
    accounts: int,
    tag: str,
    log_dir: Path,
    timeout: float,
) -> dict[str, Any]:
    from metrobus.stats import read_stats, reset_stats
    from metrobus.store import connect

    ns = common.new_namespace(tag)
    sink = log_dir / f"{ns}-sink.jsonl"
    pipe = Pipeline(ns, log_dir, sink=sink, variant=variant)
    settings = pipe.settings
    prefix = settings.redis_key("")
    await common.seed_namespace(settings, accounts)
    client = connect(settings.redis_url)
    result: dict[str, Any] = {
        "variant": variant,
        "namespace": ns,
        "rate": rate,
        "duration": duration,
        "warmup": warmup,
    }
    push: Child | None = None
    try:
        pipe.start()
        result["ready_s"] = round(await pipe.wait_ready(client), 2)
        result["load_avg_before"] = common.load_avg()
        meter = common.CpuMeter(
            {s: c.pid for s, c in pipe.children.items()} | common.service_pids()
        )
        meter.start()
        push = Child(
            f"{ns}-push",
            common.metrobus_argv(
                "push",
                "--rate",
                f"{rate:g}",
                "--duration",
                f"{duration:g}",
                "--count",
                "0",
                "--seed",
                "1",
                *pipe.args(),
            ),
            log_dir=log_dir,
        )
        meter.add("push", push.pid)
        t0 = time.monotonic()
        await asyncio.sleep(warmup)
        pipe.check_alive()
        reset_at_ms = time.time_ns() // 1_000_000
        await reset_stats(client, prefix)
        result["reset_after_s"] = round(time.monotonic() - t0, 2)
        while push.alive():
            meter.sample()
            pipe.check_alive()
            if time.monotonic() - t0 > duration + timeout:
                raise TimeoutError("push did not finish")
            await asyncio.sleep(0.5)
        if push.proc.returncode != 0:
            raise RuntimeError(f"push failed ({push.proc.returncode}):\n{push.log_tail()}")
        # drain: the sink's count stops moving (stats flush about once a second)
        last, stable = -1, 0
        deadline = time.monotonic() + timeout
        while stable < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            doc = await read_stats(client, prefix)
            done = outcomes(doc)
            stable = stable + 1 if done == last else 0
            last = done
        result["load_avg_after"] = common.load_avg()
        final = await read_stats(client, prefix)
        # CPU over the whole push (warm-up included), per message pushed
        result["cpu"] = cpu_per_message(meter.stop(), {"stops": {}}, push_count(push))
    finally:
        if push is not None:
            push.stop(grace=5.0)
        result["exit_codes"] = pipe.stop()
        await client.aclose()
    stamps = await source_timestamps(settings)
    result["broker_floor_ms"] = await broker_floor(settings)
    result.update(
        {
            "push": push_summary(push) if push else {},
            "after_warmup": {
                "pushed": final["pipeline"]["pushed"],
                "outcomes": outcomes(final),
                "delivered": final["pipeline"]["delivered"],
            },
            "e2e_latency_ms": final["pipeline"]["e2e_latency_ms"],
            "stop_batch_latency_ms": {
                s: final["stops"][s]["latency_ms"] for s in STOPS if s in final["stops"]
            },
            "exact": sink_latencies(sink, reset_at_ms, stamps),
        }
    )
    sink.unlink(missing_ok=True)
    await common.forget_namespace(settings)
    return result


def push_count(push: Child) -> int:
    return int(push_summary(push).get("sent") or 1)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def exact(name: str, q: str) -> list[Any]:
        return [x["exact"].get(name, {}).get(q) for x in rounds]

    out = {
        "stats_e2e_p50_ms": common.spread([x["e2e_latency_ms"]["p50"] for x in rounds]),
        "stats_e2e_p99_ms": common.spread([x["e2e_latency_ms"]["p99"] for x in rounds]),
        "exact_router_to_log_p50_ms": common.spread(exact("router → Log hop, all", "p50")),
        "exact_router_to_log_p99_ms": common.spread(exact("router → Log hop, all", "p99")),
        "exact_push_to_log_p99_ms": common.spread(exact("push send → Log hop, all", "p99")),
        "broker_floor_p50_ms": common.spread([x["broker_floor_ms"]["p50"] for x in rounds]),
        "broker_floor_p99_ms": common.spread([x["broker_floor_ms"]["p99"] for x in rounds]),
        "cores_busy": common.spread([x["cpu"]["cores_busy"] for x in rounds]),
    }
    out["meets_target"] = out["stats_e2e_p99_ms"]["median"] <= TARGET_P99_MS
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=5000, help="offered msg/s [5000]")
    p.add_argument("--duration", type=float, default=30, help="push duration, s [30]")
    p.add_argument("--warmup", type=float, default=5, help="seconds before stats are reset [5]")
    p.add_argument("--rounds", type=int, default=2, help="rounds [2]")
    p.add_argument("--accounts", type=int, default=100_000, help="accounts seeded [100000]")
    p.add_argument("--timeout", type=float, default=120.0, help="max seconds to drain [120]")
    p.add_argument(
        "--variants",
        default="",
        help="also run with prototype optimisations in every stop (benchmarks/variants.py), "
        "e.g. fetchwait,all,all+fetchwait; each round runs them all",
    )
    args = p.parse_args(argv)
    configs = ["", *[v.strip() for v in args.variants.split(",") if v.strip()]]
    doc: dict[str, Any] = {
        "benchmark": "latency",
        "machine": common.machine(),
        "params": vars(args),
        "target_p99_ms": TARGET_P99_MS,
        "rounds": [],
        "variant_rounds": {v: [] for v in configs[1:]},
    }
    log_dir = Path(tempfile.mkdtemp(prefix="metrobus-bench-"))
    say(f"process logs in {log_dir}")
    for r in range(args.rounds):
        shift = r % len(configs)
        for variant in configs[shift:] + configs[:shift]:
            res = asyncio.run(
                run_round(
                    variant,
                    args.rate,
                    args.duration,
                    args.warmup,
                    args.accounts,
                    f"lat{r + 1}v{configs.index(variant)}",
                    log_dir,
                    args.timeout,
                )
            )
            e2e = res["e2e_latency_ms"]
            say(
                f"{f'variant {variant} ' if variant else ''}round {r + 1}: stats e2e p50 {e2e['p50']} ms, "
                f"p99 {e2e['p99']} ms over {e2e['count']:,} delivered; "
                f"push {res['push'].get('rate', 0):,.0f}/s; load {res['load_avg_before'][0]}"
            )
            (doc["variant_rounds"][variant] if variant else doc["rounds"]).append(res)
    doc["summary"] = summarize(doc["rounds"])
    for variant, vrounds in doc["variant_rounds"].items():
        doc["summary"][f"variant {variant}"] = summarize(vrounds)
    doc["machine"]["load_avg_at_end"] = common.load_avg()
    print()
    print(
        f"latency on {common.broker_kind()}: push --rate {args.rate:g} --duration {args.duration:g}, "
        f"stats reset after {args.warmup:g}s (target p99 ≤ {TARGET_P99_MS:g} ms: "
        f"{'met' if doc['summary']['meets_target'] else 'NOT met'})"
    )
    rows = []
    for i, x in enumerate(doc["rounds"]):
        e2e = x["e2e_latency_ms"]
        rows.append(
            (
                f"r{i + 1} read_stats e2e (router wrap → sink, bucket bounds)",
                e2e["p50"],
                e2e["p90"],
                e2e["p99"],
                common.fmt(e2e["count"]),
            )
        )
        for name in (
            "router → Log hop, all",
            "router → Log hop, ALTABC (4 stops)",
            "push send → Log hop, all",
            "push send → router",
            "hop busdriver → AddEmail",
            "hop AddEmail → WhiteList",
            "hop WhiteList → Log",
            "hop busdriver → Log",
        ):
            v = x["exact"].get(name)
            if v:
                rows.append(
                    (
                        f"r{i + 1}   exact: {name}",
                        v["p50"],
                        v["p90"],
                        v["p99"],
                        common.fmt(v["count"]),
                    )
                )
        f = x["broker_floor_ms"]
        rows.append(
            (
                f"r{i + 1}   broker floor: one hop, send → getmany, idle",
                f["p50"],
                f["p90"],
                f["p99"],
                common.fmt(f["count"]),
            )
        )
    for variant, vrounds in doc["variant_rounds"].items():
        for i, x in enumerate(vrounds):
            e2e = x["e2e_latency_ms"]
            rows.append(
                (
                    f"variant {variant} r{i + 1} read_stats e2e",
                    e2e["p50"],
                    e2e["p90"],
                    e2e["p99"],
                    common.fmt(e2e["count"]),
                )
            )
            for name in ("router → Log hop, all", "push send → Log hop, all"):
                v = x["exact"].get(name)
                if v:
                    rows.append(
                        (
                            f"variant {variant} r{i + 1}   exact: {name}",
                            v["p50"],
                            v["p90"],
                            v["p99"],
                            common.fmt(v["count"]),
                        )
                    )
    print(common.table(("measure", "p50 ms", "p90 ms", "p99 ms", "messages"), rows))
    busy = [
        f"{x['variant'] or 'baseline'}: {x['cpu']['cores_busy']}"
        for x in doc["rounds"] + [y for v in doc["variant_rounds"].values() for y in v]
    ]
    print(f"cores busy during the push (of {os.cpu_count()}): {', '.join(busy)}")
    path = common.write_result("latency", doc)
    print(f"\nresults: {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
