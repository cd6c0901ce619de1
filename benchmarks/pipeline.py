"""The seed pipeline end to end: four ``metrobus run`` processes, 200,000 pushed at full speed.

busdriver, AddEmail, WhiteList and Log (stdout to /dev/null) run as four
``metrobus run STOP`` subprocesses in a fresh namespace (seeded with
``metrobus.seed``); ``metrobus push --rate 0 --count N`` runs as a fifth
process on the same cores. ``read_stats`` is sampled once a second; outcomes
are delivered + dropped + errors summed over the stops. Reported:

* sustained outcomes/s: between the 10 % and 90 % crossings of the outcome
  count (interpolated between samples);
* wall time from starting the push to the last outcome counted (stats are
  flushed about once a second per process, so this is late by up to ~1 s);
* the push rate achieved, and the conservation check pushed = outcomes.

DESIGN §7: ≥ 20,000 messages/s sustained on a 2-core machine.

    python -m benchmarks pipeline [--count N] [--rounds R] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import common
from benchmarks.common import Child, say

STOPS = ("busdriver", "AddEmail", "WhiteList", "Log")
TARGET_RATE = 20_000


class Pipeline:
    """The four stop processes of one namespace; always stopped by ``stop()``."""

    def __init__(
        self,
        namespace: str,
        log_dir: Path,
        *,
        sink: Path | None = None,
        profile_dir: Path | None = None,
        variant: str = "",
    ) -> None:
        self.namespace, self.log_dir, self.variant = namespace, log_dir, variant
        self.settings = common.settings_for(namespace)
        self.sink, self.profile_dir = sink, profile_dir
        self.children: dict[str, Child] = {}
        self.exit_codes: dict[str, int | None] = {}
        self._sink_file: Any = None

    def args(self, *extra: str) -> list[str]:
        return ["--config", str(common.CONFIG), "--namespace", self.namespace, *extra]

    def start(self) -> None:
        for stop in STOPS:
            run_args = [stop, *self.args("--log-level", "WARNING")]
            if self.profile_dir is not None:
                out = self.profile_dir / f"{self.namespace}-{stop}.json"
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks.profiling",
                    "run-stop",
                    str(out),
                    "--",
                    *run_args,
                ]
            elif self.variant and not self.variant.startswith("src:"):
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks.variants",
                    "run-stop",
                    self.variant,
                    "--",
                    *run_args,
                ]
            else:
                argv = common.metrobus_argv("run", *run_args)
            stdout: Any = subprocess.DEVNULL
            if stop == "Log" and self.sink is not None:
                self._sink_file = stdout = self.sink.open("wb")
            # src:PATH runs the metrobus package in PATH (an A/B of two source trees)
            env = {"PYTHONPATH": self.variant[4:]} if self.variant.startswith("src:") else None
            self.children[stop] = Child(
                f"{self.namespace}-{stop}", argv, env=env, stdout=stdout, log_dir=self.log_dir
            )

    def check_alive(self) -> None:
        for stop, child in self.children.items():
            if not child.alive():
                raise RuntimeError(
                    f"stop {stop} exited ({child.proc.returncode}):\n{child.log_tail()}"
                )

    async def wait_ready(self, client: Any, timeout: float = 90.0) -> float:
        """Until every stop has a worker that owns partitions (its group has formed)."""
        from metrobus.stats import read_stats

        started = time.monotonic()
        while True:
            self.check_alive()
            doc = await read_stats(client, self.settings.redis_key(""))
            ready = [
                s
                for s in STOPS
                if s in doc["stops"]
                and any(a["partitions"] for a in doc["stops"][s]["assignments"].values())
            ]
            if len(ready) == len(STOPS):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"stops not ready after {timeout:g}s: only {ready}")
            await asyncio.sleep(0.25)

    def stop(self) -> dict[str, int | None]:
        for child in self.children.values():  # SIGTERM all first: they drain in parallel
            child.terminate()
        for stop, child in self.children.items():
            self.exit_codes[stop] = child.stop(grace=15.0)
        if self._sink_file is not None:
            self._sink_file.close()
        return self.exit_codes


def outcomes(doc: dict[str, Any]) -> int:
    p = doc["pipeline"]
    return int(p["delivered"] + p["dropped"] + p["errors"])


def push_summary(child: Child) -> dict[str, Any]:
    text = child.log_path.read_text(errors="replace") if child.log_path.exists() else ""
    m = re.search(
        r"sent ([\d,]+) messages in ([\d.]+)s \(([\d,]+)/s achieved\), (\d+) errors", text
    )
    if not m:
        return {"log_tail": text[-500:]}
    return {
        "sent": int(m[1].replace(",", "")),
        "seconds": float(m[2]),
        "rate": float(m[3].replace(",", "")),
        "errors": int(m[4]),
    }


async def run_round(
    n: int,
    accounts: int,
    tag: str,
    log_dir: Path,
    profile_dir: Path | None,
    sample: float,
    timeout: float,
    variant: str = "",
) -> dict[str, Any]:
    from metrobus.stats import read_stats
    from metrobus.store import connect

    ns = common.new_namespace(tag)
    pipe = Pipeline(ns, log_dir, profile_dir=profile_dir, variant=variant)
    settings = pipe.settings
    prefix = settings.redis_key("")
    await common.seed_namespace(settings, accounts)
    client = connect(settings.redis_url)
    result: dict[str, Any] = {"namespace": ns, "count": n, "variant": variant}
    push: Child | None = None
    try:
        pipe.start()
        result["ready_s"] = round(await pipe.wait_ready(client), 2)
        result["load_avg_before"] = common.load_avg()
        meter = common.CpuMeter(
            {s: c.pid for s, c in pipe.children.items()} | common.service_pids()
        )
        meter.start()
        t0 = time.monotonic()
        push = Child(
            f"{ns}-push",
            common.metrobus_argv(
                "push", "--rate", "0", "--count", str(n), "--seed", "1", *pipe.args()
            ),
            log_dir=log_dir,
        )
        meter.add("push", push.pid)
        samples: list[dict[str, Any]] = []
        push_done: float | None = None
        last_progress, last_value = time.monotonic(), -1
        while True:
            await asyncio.sleep(sample)
            meter.sample()
            pipe.check_alive()
            doc = await read_stats(client, prefix)
            now = time.monotonic() - t0
            done = outcomes(doc)
            samples.append(
                {
                    "t": round(now, 3),
                    "pushed": doc["pipeline"]["pushed"],
                    "outcomes": done,
                    "in": {s: doc["stops"].get(s, {}).get("in", 0) for s in STOPS},
                }
            )
            if push_done is None and not push.alive():
                push_done = now
                if push.proc.returncode != 0:
                    raise RuntimeError(f"push failed ({push.proc.returncode}):\n{push.log_tail()}")
            if done != last_value:
                last_progress, last_value = time.monotonic(), done
            if done >= n and doc["pipeline"]["pushed"] >= n and push_done is not None:
                break
            if time.monotonic() - last_progress > 30:
                raise RuntimeError(f"no progress for 30 s at {done:,}/{n:,} outcomes")
            if now > timeout:
                raise TimeoutError(f"not drained after {timeout:g}s: {done:,}/{n:,} outcomes")
        result["cpu"] = cpu_per_message(meter.stop(), await read_stats(client, prefix), n)
        result["load_avg_after"] = common.load_avg()
        final = await read_stats(client, prefix)
    finally:
        if push is not None:
            push.stop(grace=5.0)
        result["exit_codes"] = pipe.stop()
        await client.aclose()
    series = [(s["t"], s["outcomes"]) for s in samples]
    t10, t90 = common.crossing(series, 0.1 * n), common.crossing(series, 0.9 * n)
    drained = common.crossing(series, n)
    rates = [
        (b["outcomes"] - a["outcomes"]) / (b["t"] - a["t"]) for a, b in itertools.pairwise(samples)
    ]
    result.update(
        {
            "push": push_summary(push) if push else {},
            "push_exit_s": round(push_done or 0.0, 2),
            "drain_s": round(drained, 2) if drained else None,
            "sustained_rate": round(0.8 * n / (t90 - t10), 1)
            if t10 is not None and t90 and t90 > t10
            else None,
            "overall_rate": round(n / drained, 1) if drained else None,
            "peak_1s_rate": round(max(rates), 1) if rates else None,
            "pushed": final["pipeline"]["pushed"],
            "delivered": final["pipeline"]["delivered"],
            "dropped": final["pipeline"]["dropped"],
            "errors": final["pipeline"]["errors"],
            "conserved": final["pipeline"]["pushed"] == n == outcomes(final),
            "stops": {
                s: {
                    k: final["stops"][s][k]
                    for k in ("in", "out", "delivered", "dropped", "errors", "latency_ms")
                }
                for s in STOPS
                if s in final["stops"]
            },
            "e2e_latency_ms": final["pipeline"]["e2e_latency_ms"],
            "samples": samples,
        }
    )
    if profile_dir is not None:
        result["profiles"] = collect_profiles(profile_dir, ns, final)
    await common.forget_namespace(settings)
    return result


def cpu_per_message(cpu: dict[str, Any], doc: dict[str, Any], pushed: int) -> dict[str, Any]:
    """CPU µs per message each process really spent (stops: per message it took in)."""
    per = {}
    for name, seconds in cpu["cpu_s"].items():
        n = doc["stops"].get(name, {}).get("in") if name in STOPS else pushed
        per[name] = round(seconds / n * 1e6, 1) if seconds is not None and n else None
    cpu["us_per_message"] = per
    cpu["us_per_pushed_message_all_processes"] = round(cpu["cpu_total_s"] / pushed * 1e6, 1)
    return cpu


def collect_profiles(profile_dir: Path, ns: str, final: dict[str, Any]) -> dict[str, Any]:
    from benchmarks import profiling

    profiles = {}
    for stop in STOPS:
        path = profile_dir / f"{ns}-{stop}.json"
        if not path.exists():
            say(f"no profile for {stop} ({path})")
            continue
        doc = orjson.loads(path.read_bytes())
        messages = final["stops"].get(stop, {}).get("in", 0) or None
        summary = doc["summary"]
        # recompute per-message numbers now that the stop's message count is known
        for row in (*summary["categories"], *summary["top_functions"]):
            row["us_per_msg"] = round(row["s"] / messages * 1e6, 2) if messages else None
        summary["messages"] = messages
        summary["busy_us_per_message"] = (
            round(summary["busy_s"] / messages * 1e6, 2) if messages else None
        )
        profiles[stop] = {**summary, "text": doc["text"]}
        _ = profiling  # summaries are rendered by profiling.summary_table
    return profiles


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--count", "-n", type=int, default=200_000, help="messages pushed per round [200000]"
    )
    p.add_argument("--rounds", type=int, default=3, help="measured rounds [3]")
    p.add_argument("--accounts", type=int, default=100_000, help="accounts seeded [100000]")
    p.add_argument("--sample", type=float, default=1.0, help="stats sampling interval, s [1]")
    p.add_argument("--timeout", type=float, default=300.0, help="max seconds per round [300]")
    p.add_argument(
        "--profile", action="store_true", help="one extra round with every stop under pyinstrument"
    )
    p.add_argument(
        "--variants",
        default="",
        help="also run the pipeline with prototype optimisations in every stop "
        "(benchmarks/variants.py), e.g. gc,all,all+batch; each round runs them all",
    )
    args = p.parse_args(argv)
    doc: dict[str, Any] = {
        "benchmark": "pipeline",
        "machine": common.machine(),
        "params": vars(args),
        "target_rate": TARGET_RATE,
        "rounds": [],
    }
    log_dir = Path(tempfile.mkdtemp(prefix="metrobus-bench-"))
    say(f"process logs in {log_dir}")
    configs = ["", *[v.strip() for v in args.variants.split(",") if v.strip()]]
    doc["variant_rounds"] = {v: [] for v in configs[1:]}
    for r in range(args.rounds + (1 if args.profile else 0)):
        profiled = args.profile and r == args.rounds
        order = configs[r % len(configs) :] + configs[: r % len(configs)] if not profiled else [""]
        for variant in order:
            res = asyncio.run(
                run_round(
                    args.count,
                    args.accounts,
                    f"pipe{r + 1}v{configs.index(variant)}",
                    log_dir,
                    log_dir if profiled else None,
                    args.sample,
                    args.timeout,
                    variant,
                )
            )
            res["profiled"] = profiled
            label = "profiled " if profiled else f"variant {variant} " if variant else ""
            say(
                f"{label}round {r + 1}: sustained {common.fmt(res['sustained_rate'])}/s, "
                f"drained {args.count:,} in {res['drain_s']}s (push {res['push'].get('rate', 0):,.0f}/s over "
                f"{res['push'].get('seconds')}s), conserved {res['conserved']}, exits {res['exit_codes']}, "
                f"load {res['load_avg_before'][0]}"
            )
            if profiled:
                doc["profiled_round"] = res
            elif variant:
                doc["variant_rounds"][variant].append(res)
            else:
                doc["rounds"].append(res)
    measured = doc["rounds"]
    doc["summary"] = {
        "sustained_rate": common.spread([x["sustained_rate"] for x in measured]),
        "overall_rate": common.spread([x["overall_rate"] for x in measured]),
        "drain_s": common.spread([x["drain_s"] for x in measured]),
        "push_rate": common.spread([x["push"].get("rate") for x in measured]),
        "all_conserved": all(x["conserved"] for x in measured),
    }
    if measured:
        doc["summary"]["meets_target"] = doc["summary"]["sustained_rate"]["median"] >= TARGET_RATE
    doc["machine"]["load_avg_at_end"] = common.load_avg()
    rows = [
        (
            f"r{i + 1}",
            common.fmt(x["sustained_rate"]),
            common.fmt(x["overall_rate"]),
            common.fmt(x["peak_1s_rate"]),
            x["drain_s"],
            common.fmt(x["push"].get("rate")),
            f"{x['delivered']:,}/{x['dropped']:,}/{x['errors']}",
            "yes" if x["conserved"] else "NO",
            x["load_avg_before"][0],
        )
        for i, x in enumerate(measured)
    ]
    s = doc["summary"]
    if measured:
        rows.append(
            (
                "median [min-max]",
                f"{common.fmt(s['sustained_rate']['median'])} [{common.fmt(s['sustained_rate']['min'])}-{common.fmt(s['sustained_rate']['max'])}]",
                common.fmt(s["overall_rate"]["median"]),
                "",
                s["drain_s"]["median"],
                common.fmt(s["push_rate"]["median"]),
                "",
                "",
                "",
            )
        )
    for variant, vrounds in doc["variant_rounds"].items():
        vs = common.spread([x["sustained_rate"] for x in vrounds])
        gains = [
            x["sustained_rate"] / b["sustained_rate"] - 1
            for x, b in zip(vrounds, measured, strict=False)
            if x["sustained_rate"] and b["sustained_rate"]
        ]
        doc["summary"][f"variant {variant}"] = {
            "sustained_rate": vs,
            "gain": common.spread(gains),
            "all_conserved": all(x["conserved"] for x in vrounds),
        }
        rows.append(
            (
                f"variant {variant}",
                f"{common.fmt(vs['median'])} [{common.fmt(vs['min'])}-{common.fmt(vs['max'])}]",
                common.fmt(common.spread([x["overall_rate"] for x in vrounds])["median"]),
                "",
                common.spread([x["drain_s"] for x in vrounds])["median"],
                "",
                f"gain {100 * common.spread(gains)['median']:+.0f}%" if gains else "",
                "yes" if all(x["conserved"] for x in vrounds) else "NO",
                "",
            )
        )
    print()
    print(
        f"pipeline on {common.broker_kind()}: 4 `metrobus run` processes + `metrobus push --rate 0 "
        f"--count {args.count:,}` on {os.cpu_count()} cores (target ≥ {TARGET_RATE:,}/s sustained: "
        f"{'met' if s.get('meets_target') else 'NOT met'})"
    )
    print(
        common.table(
            (
                "round",
                "sustained/s",
                "overall/s",
                "peak 1s/s",
                "drain s",
                "push/s",
                "deliv/drop/err",
                "conserved",
                "load",
            ),
            rows,
        )
    )
    if measured and measured[0].get("cpu"):
        configs = [
            ("baseline", measured),
            *((f"variant {v}", r) for v, r in doc["variant_rounds"].items()),
        ]
        names = list(measured[0]["cpu"]["cpu_s"])
        crow = []
        for label, rounds in configs:
            per = {
                k: common.spread([x["cpu"]["us_per_message"].get(k) for x in rounds]) for k in names
            }
            total = common.spread([x["cpu"]["us_per_pushed_message_all_processes"] for x in rounds])
            busy = common.spread([x["cpu"]["cores_busy"] for x in rounds])
            doc["summary"].setdefault(label if label != "baseline" else "baseline", {})[
                "cpu_us_per_msg"
            ] = {k: v["median"] for k, v in per.items()} | {
                "all_processes_per_pushed": total["median"],
                "cores_busy": busy["median"],
            }
            crow.append(
                (
                    label,
                    *(common.fmt(per[k]["median"], 1) for k in names),
                    f"{common.fmt(total['median'], 1)} [{common.fmt(total['min'], 1)}-{common.fmt(total['max'], 1)}]",
                    common.fmt(busy["median"], 2),
                )
            )
        print(
            "\nCPU µs per message from /proc, medians (push start → drained; stops: per message taken "
            "in; push, broker, redis and the total: per message pushed)"
        )
        print(common.table(("config", *names, "total/pushed [min-max]", "cores busy"), crow))
    if "profiled_round" in doc:
        from benchmarks import profiling

        pr = doc["profiled_round"]
        print(
            f"\nprofiled round: sustained {common.fmt(pr['sustained_rate'])}/s under pyinstrument"
        )
        for stop, prof in pr.get("profiles", {}).items():
            print(
                f"\nprofile {stop}: {prof['messages']:,} messages, busy {prof['busy_us_per_message']} µs/msg "
                f"({prof['busy_s']:.1f}s of {prof['profiled_s']:.1f}s)"
            )
            print(profiling.summary_table(prof))
    path = common.write_result("pipeline", doc)
    print(f"\nresults: {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
