"""A built-in stop against a minimal hand-written aiokafka loop doing the same work.

Each round pre-fills a fresh namespace's input topic (6 partitions) with N
envelopes as the router writes them, then runs both contenders on it, one after
the other (alternating who goes first), each in a fresh Python process with
its own consumer group:

* ``handwritten``: ``benchmarks/handwritten.py`` (getmany → loads → one MGET or
  SMISMEMBER → set/drop → hop → dumps → send each → await acks → commit);
* ``metrobus``: the configured stop (``AddEmail`` or ``WhiteList``) hosted by
  ``metrobus.host.async_run(settings, stop, stopping=event)``.

Throughput is N / (time the last batch was done − time the first batch
arrived), timed inside each process (metrobus: a wrapper around
``StopRunner.handle_batch``, one call per batch). DESIGN §7: metrobus ≥ 0.85 ×
hand-written.

    python -m benchmarks stop_vs_handwritten [--count N] [--rounds R] [--kinds enrich,filter] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import say

STOPS = {"enrich": ("AddEmail", "WhiteList"), "filter": ("WhiteList", "Log")}
ROUTE = ["AddEmail", "WhiteList", "Log"]
TARGET_RATIO = 0.85


# -- pre-fill -------------------------------------------------------------------
def envelopes(
    kind: str, n: int, last_account: int, emails: dict[int, str]
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) as the router (and, for the filter, AddEmail) would have written them."""
    from metrobus.envelope import Envelope
    from metrobus.seed import FIRST_ACCOUNT

    rng = random.Random(7)
    accounts = list(emails)
    for x in range(n):
        if kind == "enrich":  # like `metrobus push`: any id in the range, ~1/3 have an email
            account = rng.randint(FIRST_ACCOUNT, last_account)
            payload: dict[str, Any] = {
                "x": x,
                "message_type_code": "ALTABC",
                "account_number": account,
            }
        else:  # every message has an email; about half are whitelisted
            account = rng.choice(accounts)
            payload = {
                "x": x,
                "message_type_code": "ALTABC",
                "account_number": account,
                "email": emails[account],
            }
        env = Envelope.wrap(payload, ROUTE)
        env.hop("busdriver")
        if kind == "filter":
            env.hop("AddEmail")
        yield str(account).encode(), env.encode()


async def prepare(kind: str, n: int, accounts: int, tag: str) -> dict[str, Any]:
    from metrobus import bus

    ns = common.new_namespace(tag)
    settings = common.settings_for(ns)
    seeded, emails = await common.seed_namespace(settings, accounts)
    stop, nxt = STOPS[kind]
    topics = [stop, nxt, f"hw-{nxt}", settings.dead_letter_topic]
    await bus.ensure_topics(
        settings.bootstrap, [settings.topic(t) for t in topics], 6, settings.connect_timeout
    )
    seconds = await common.produce_all(
        settings.bootstrap, settings.topic(stop), envelopes(kind, n, seeded.last_account, emails)
    )
    say(f"{ns}: pre-filled {settings.topic(stop)} with {n:,} envelopes in {seconds:.1f}s")
    return {"namespace": ns, "prefill_s": round(seconds, 2)}


# -- the contenders (each in its own process) ----------------------------------
class Window:
    """First batch in → last batch done; optionally profiles exactly that window."""

    def __init__(self, expect: int, profile: bool) -> None:
        self.expect, self.seen, self.batches = expect, 0, 0
        self.first: float | None = None
        self.last: float | None = None
        self.profiler: Any = None
        if profile:
            from pyinstrument import Profiler

            self.profiler = Profiler(interval=0.0005, async_mode="disabled")

    def begin(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            if self.profiler is not None:
                self.profiler.start()

    def end(self) -> None:
        self.last = time.perf_counter()
        if self.profiler is not None:
            self.profiler.stop()

    def result(self) -> dict[str, Any]:
        seconds = (self.last or 0.0) - (self.first or 0.0)
        doc: dict[str, Any] = {
            "messages": self.seen,
            "seconds": round(seconds, 4),
            "rate": round(self.seen / seconds, 1) if seconds > 0 else None,
            "batches": self.batches,
            "mean_batch": round(self.seen / self.batches, 1) if self.batches else None,
        }
        if self.profiler is not None and self.profiler.last_session is not None:
            from benchmarks import profiling

            root = self.profiler.last_session.root_frame()
            doc["profile"] = profiling.summarize(root, self.seen)
            doc["profile_text"] = profiling.text_of(self.profiler)
        return doc


async def run_metrobus(
    kind: str, ns: str, n: int, profile: bool, variant: str = ""
) -> dict[str, Any]:
    from metrobus import host
    from metrobus.runner import StopRunner
    from metrobus.settings import Settings

    settings = common.settings_for(ns)
    stop = STOPS[kind][0]
    stopping = asyncio.Event()
    window = Window(n, profile)
    if variant:
        from benchmarks import variants

        if not variant.startswith("src:"):  # src:PATH = another source tree, via PYTHONPATH
            variants.apply(variants.expand(variant))
        group = Settings.group  # a consumer group of its own, on the same topic
        suffix = re.sub(r"[^A-Za-z0-9._-]", "_", variant)
        Settings.group = lambda self, name: f"{group(self, name)}.{suffix}"  # type: ignore[method-assign]
    handle_batch = StopRunner.handle_batch

    async def timed(self: StopRunner, records: list[Any]) -> None:
        window.begin()
        await handle_batch(self, records)
        window.seen += len(records)
        window.batches += 1
        if window.seen >= n and window.last is None:
            window.end()
            stopping.set()

    StopRunner.handle_batch = timed  # type: ignore[method-assign]
    tune_gc = getattr(host, "tune_gc", None)  # absent in older trees (src:PATH contenders)
    if tune_gc is not None:
        tune_gc()  # what `metrobus run` does before it hosts a stop
    runner = await host.async_run(settings, stop, stopping=stopping)
    doc = window.result()
    totals = runner.stats.totals
    doc.update(forwarded=totals["out"], dropped=totals["dropped"], errors=totals["errors"])
    doc["hosted_by"] = (
        f"{'metrobus.host.tune_gc(); ' if tune_gc else ''}"
        f"metrobus.host.async_run(settings, {stop!r}, stopping=event)"
    )
    return doc


async def run_handwritten(kind: str, ns: str, n: int, profile: bool) -> dict[str, Any]:
    from benchmarks import handwritten

    settings = common.settings_for(ns)
    stop, nxt = STOPS[kind]
    window = Window(n, profile)
    progress = handwritten.Progress(n, on_first=window.begin, on_done=window.end)
    await handwritten.run(
        kind,
        bootstrap=settings.bootstrap,
        redis_url=settings.redis_url,
        topic=settings.topic(stop),
        out_topic=settings.topic(f"hw-{nxt}"),
        group=f"{ns}.handwritten.{stop}",
        prefix=settings.redis_key(""),
        progress=progress,
        session_timeout_ms=settings.session_timeout_ms,
    )
    window.seen, window.batches = progress.seen, progress.batches
    doc = window.result()
    doc.update(forwarded=progress.forwarded, dropped=progress.dropped, errors=0)
    return doc


def worker_main(argv: list[str]) -> int:
    impl, kind, ns, n = argv[0], argv[1], argv[2], int(argv[3])
    profile = "--profile" in argv
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if impl.startswith("metrobus"):
        variant = impl.partition(":")[2]
        doc = asyncio.run(run_metrobus(kind, ns, n, profile, variant))
    else:
        doc = asyncio.run(run_handwritten(kind, ns, n, profile))
    doc.update(impl=impl, kind=kind, namespace=ns)
    print(json.dumps(doc), flush=True)
    return 0


def variant_env(impl: str) -> dict[str, str]:
    """``metrobus:src:PATH`` runs the metrobus package found in PATH (an A/B of two trees)."""
    env = dict(os.environ)
    spec = impl.partition(":")[2]
    if spec.startswith("src:"):
        env["PYTHONPATH"] = spec[4:] + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
    return env


def run_worker(
    impl: str, kind: str, ns: str, n: int, profile: bool, timeout: float, log_dir: Path
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "benchmarks.stop_vs_handwritten",
        "worker",
        impl,
        kind,
        ns,
        str(n),
    ]
    if profile:
        argv.append("--profile")
    log = log_dir / f"{ns}-{re.sub(r'[^A-Za-z0-9._-]', '_', impl)}.log"
    load_before = common.load_avg()
    with log.open("wb") as err:
        try:
            proc = subprocess.run(
                argv,
                env=variant_env(impl),
                cwd=common.ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # subprocess.run killed it; its Kafka/Redis clients die with it
            raise RuntimeError(f"{impl} worker timed out after {timeout:g}s (log: {log})") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{impl} worker failed ({proc.returncode}):\n{tail}")
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["load_avg_before"] = load_before
    return doc


# -- the driver -----------------------------------------------------------------
def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks stop_vs_handwritten", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--count", "-n", type=int, default=200_000, help="envelopes per round [200000]")
    p.add_argument("--rounds", type=int, default=3, help="rounds per stop kind [3]")
    p.add_argument("--kinds", default="enrich,filter", help="enrich,filter [both]")
    p.add_argument("--accounts", type=int, default=100_000, help="accounts seeded [100000]")
    p.add_argument("--profile", action="store_true", help="one extra profiled round per kind")
    p.add_argument(
        "--variants",
        default="",
        help="also run metrobus with prototype optimisations (benchmarks/variants.py), e.g. "
        "gc,notasks,decode,partition,acks,all (combine with +: gc+notasks)",
    )
    p.add_argument(
        "--worker-timeout", type=float, default=180.0, help="seconds per contender [180]"
    )
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    doc: dict[str, Any] = {
        "benchmark": "stop_vs_handwritten",
        "machine": common.machine(),
        "params": vars(args),
        "target_ratio": TARGET_RATIO,
        "rounds": [],
        "profiles": {},
    }
    log_dir = Path(tempfile.mkdtemp(prefix="metrobus-bench-"))
    say(f"worker logs in {log_dir}")
    for r in range(args.rounds + (1 if args.profile else 0)):
        profiled = args.profile and r == args.rounds
        for kind in kinds:
            prep = asyncio.run(prepare(kind, args.count, args.accounts, f"{kind}{r + 1}"))
            ns = prep["namespace"]
            order = ["handwritten", "metrobus"]
            if not profiled:
                order += [f"metrobus:{v.strip()}" for v in args.variants.split(",") if v.strip()]
            shift = r % len(order)  # rotate who goes first, round by round
            order = order[shift:] + order[:shift]
            results = {}
            try:
                for impl in order:
                    res = run_worker(
                        impl, kind, ns, args.count, profiled, args.worker_timeout, log_dir
                    )
                    results[impl] = res
                    say(
                        f"{'profiled ' if profiled else ''}round {r + 1} {kind:6} {impl:19} "
                        f"{res['rate']:>9,.0f} msg/s  ({res['seconds']:.2f}s, fwd {res['forwarded']:,}, "
                        f"drop {res['dropped']:,}, {res['mean_batch']} rec/batch, load {res['load_avg_before'][0]})"
                    )
            finally:
                asyncio.run(common.forget_namespace(common.settings_for(ns)))
            if profiled:
                for impl, res in results.items():
                    doc["profiles"][f"{kind}/{impl}"] = {
                        "rate_while_profiled": res["rate"],
                        **res.pop("profile", {}),
                        "text": res.pop("profile_text", ""),
                    }
                continue
            hw, mb = results["handwritten"], results["metrobus"]
            doc["rounds"].append(
                {
                    "round": r + 1,
                    "kind": kind,
                    "order": order,
                    "prefill": prep,
                    "handwritten": hw,
                    "metrobus": mb,
                    "ratio": round(mb["rate"] / hw["rate"], 3),
                    "same_outcomes": all(
                        x["forwarded"] == hw["forwarded"] and x["dropped"] == hw["dropped"]
                        for x in results.values()
                    ),
                    "variants": {
                        impl.partition(":")[2]: {
                            **res,
                            "ratio_to_handwritten": round(res["rate"] / hw["rate"], 3),
                            "gain_over_metrobus": round(res["rate"] / mb["rate"] - 1, 3),
                        }
                        for impl, res in results.items()
                        if impl.startswith("metrobus:")
                    },
                }
            )
    doc["summary"] = {}
    rows = []
    for kind in kinds:
        rounds = [x for x in doc["rounds"] if x["kind"] == kind]
        hw = common.spread([x["handwritten"]["rate"] for x in rounds])
        mb = common.spread([x["metrobus"]["rate"] for x in rounds])
        ratio = common.spread([x["ratio"] for x in rounds])
        doc["summary"][kind] = {
            "handwritten": hw,
            "metrobus": mb,
            "ratio": ratio,
            "meets_target": ratio["median"] >= TARGET_RATIO,
        }
        for x in rounds:
            rows.append(
                (
                    f"{kind} r{x['round']}",
                    common.fmt(x["handwritten"]["rate"]),
                    common.fmt(x["metrobus"]["rate"]),
                    f"{x['ratio']:.3f}",
                    "yes" if x["same_outcomes"] else "NO",
                )
            )
        rows.append(
            (
                f"{kind} median [min-max]",
                f"{common.fmt(hw['median'])} [{common.fmt(hw['min'])}-{common.fmt(hw['max'])}]",
                f"{common.fmt(mb['median'])} [{common.fmt(mb['min'])}-{common.fmt(mb['max'])}]",
                f"{ratio['median']:.3f} [{ratio['min']:.3f}-{ratio['max']:.3f}]",
                "target ≥ 0.85: " + ("met" if ratio["median"] >= TARGET_RATIO else "NOT met"),
            )
        )
        names = sorted({v for x in rounds for v in x["variants"]}, key=lambda v: (v == "all", v))
        for v in names:
            rate = common.spread([x["variants"][v]["rate"] for x in rounds if v in x["variants"]])
            gain = common.spread(
                [x["variants"][v]["gain_over_metrobus"] for x in rounds if v in x["variants"]]
            )
            vratio = common.spread(
                [x["variants"][v]["ratio_to_handwritten"] for x in rounds if v in x["variants"]]
            )
            doc["summary"][kind][f"variant {v}"] = {
                "rate": rate,
                "gain_over_metrobus": gain,
                "ratio": vratio,
            }
            rows.append(
                (
                    f"{kind} variant {v}",
                    "",
                    f"{common.fmt(rate['median'])} "
                    f"[{common.fmt(rate['min'])}-{common.fmt(rate['max'])}]",
                    f"{vratio['median']:.3f} [{vratio['min']:.3f}-{vratio['max']:.3f}]",
                    f"gain {100 * gain['median']:+.0f}% [{100 * gain['min']:+.0f}..{100 * gain['max']:+.0f}]",
                )
            )
    doc["machine"]["load_avg_at_end"] = common.load_avg()
    print()
    print(
        f"stop_vs_handwritten on {common.broker_kind()}: {args.count:,} envelopes per round, "
        f"msg/s from first batch in to last batch done (load avg at start "
        f"{doc['machine']['load_avg_at_start']}, end {doc['machine']['load_avg_at_end']})"
    )
    print(
        common.table(
            (
                "run",
                "hand-written msg/s",
                "metrobus msg/s",
                "ratio to hand-written",
                "same outcomes / gain",
            ),
            rows,
        )
    )
    if doc["profiles"]:
        from benchmarks import profiling

        for name, prof in doc["profiles"].items():
            print(
                f"\nprofile {name} ({common.fmt(prof['rate_while_profiled'])} msg/s while profiled, "
                f"busy {prof['busy_us_per_message']} µs/msg)"
            )
            print(profiling.summary_table(prof))
    path = common.write_result("stop_vs_handwritten", doc)
    print(f"\nresults: {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
