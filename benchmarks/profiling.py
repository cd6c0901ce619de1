"""Where a stop's time goes: pyinstrument samples, grouped into message-path categories.

Every sampled stack is charged to the *innermost* frame that matches a
category rule below (a frame that matches none inherits its caller's
category), so the categories add up to the profiled wall time; C functions
(orjson, epoll) inherit their caller's category, except the epoll wait
itself, which is "idle". ``top_functions`` lists self time per function as a
cross-check.

Also an entry point that hosts one stop exactly like ``metrobus run`` but
under the profiler (used by ``pipeline --profile``):

    python -m benchmarks.profiling run-stop OUT.json -- AddEmail [metrobus run options]
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Rule = tuple[str, Callable[[str, str], bool]]


def _in(part: str, *functions: str) -> Callable[[str, str], bool]:
    def match(path: str, function: str) -> bool:
        return part in path and (not functions or function in functions)

    return match


# First match wins for a frame; the innermost matching frame of a stack wins.
RULES: list[Rule] = [
    ("kafka: consumer.getmany()", _in("aiokafka/consumer/consumer.py", "getmany")),
    ("kafka: fetcher task (fetch, parse records)", _in("aiokafka/consumer/fetcher.py")),
    ("kafka: group coordinator, commit", _in("aiokafka/consumer/group_coordinator.py")),
    ("kafka: producer.send() per record", _in("aiokafka/producer/producer.py", "send")),
    ("kafka: sender task (batches, acks)", _in("aiokafka/producer/sender.py")),
    ("kafka: connection I/O", _in("aiokafka/conn.py")),
    ("kafka: partitioner (murmur2), metadata", _in("aiokafka/partitioner.py")),
    ("kafka: partitioner (murmur2), metadata", _in("aiokafka/cluster.py")),
    (
        "kafka: accumulator, record batches, ack futures",
        _in("aiokafka/producer/message_accumulator.py"),
    ),
    ("kafka: accumulator, record batches, ack futures", _in("aiokafka/record/")),
    ("kafka: other aiokafka", _in("aiokafka/")),
    ("redis client (pipeline pack/parse, I/O)", _in("/redis/")),
    ("metrobus: decode (orjson.loads + checks)", _in("metrobus/runner.py", "decode")),
    ("metrobus: decode (orjson.loads + checks)", _in("metrobus/envelope.py", "decode")),
    ("metrobus: decode (orjson.loads + checks)", _in("metrobus/envelope.py", "from_object")),
    ("metrobus: decode (orjson.loads + checks)", _in("metrobus/envelope.py", "parse_json_object")),
    ("metrobus: decode (orjson.loads + checks)", _in("metrobus/envelope.py", "_string_list")),
    ("metrobus: Envelope.hop", _in("metrobus/envelope.py", "hop")),
    ("metrobus: router wrap (uuid4)", _in("metrobus/envelope.py", "wrap")),
    ("metrobus: encode (orjson.dumps + header)", _in("metrobus/envelope.py")),
    ("metrobus: route() outcome", _in("metrobus/runner.py", "route")),
    ("metrobus: Context()", _in("metrobus/context.py", "__init__")),
    ("metrobus: Store lookups (futures, flush)", _in("metrobus/store.py")),
    ("metrobus: handler body", _in("metrobus/stops/")),
    ("metrobus: handler body", _in("metrobus/context.py")),
    ("metrobus: stats (account, flush)", _in("metrobus/stats.py")),
    ("metrobus: stats (account, flush)", _in("metrobus/runner.py", "account")),
    ("metrobus: commit", _in("metrobus/runner.py", "commit")),
    ("metrobus: produce/_send loop", _in("metrobus/runner.py", "produce", "_send")),
    ("metrobus: outcome objects", _in("metrobus/outcome.py")),
    ("metrobus: drive (stepping handler coroutines)", _in("metrobus/drive.py")),
    ("metrobus: batch loop (process, handle_batch, run)", _in("metrobus/runner.py")),
    ("hand-written loop", _in("benchmarks/handwritten.py")),
    ("asyncio: gather / task creation", _in("asyncio/tasks.py", "gather", "_ensure_future")),
    ("asyncio: tasks, futures, wait", _in("asyncio/tasks.py")),
    ("asyncio: tasks, futures, wait", _in("asyncio/futures.py")),
    ("asyncio: tasks, futures, wait", _in("asyncio/locks.py")),
    ("idle (epoll wait)", _in("selectors.py")),
    ("event loop: callbacks, Task steps (C)", _in("asyncio/events.py")),
    ("event loop: _run_once, transports", _in("asyncio/")),
]


def _category(frame: Any, inherited: str) -> str:
    path = frame.file_path or ""
    function = frame.function or ""
    for name, match in RULES:
        if match(path, function):
            return name
    return inherited


def summarize(root: Any, messages: int | None = None) -> dict[str, Any]:
    """Categories (seconds, share, µs per message) and the top self-time functions."""
    cats: Counter[str] = Counter()
    funcs: Counter[str] = Counter()
    stack: list[tuple[Any, str]] = [(root, "other (start-up, bench harness)")]
    while stack:
        frame, inherited = stack.pop()
        if frame.is_synthetic:  # a "[self]" leaf: the parent's own time
            cats[inherited] += frame.time
            continue
        cat = _category(frame, inherited)
        children = list(frame.children)
        own = frame.time - sum(c.time for c in children)
        label = f"{frame.function} ({_short(frame.file_path)})"
        self_time = own + sum(c.time for c in children if c.is_synthetic)
        if self_time > 0:
            funcs[label] += self_time
        if own > 0:
            cats[cat] += own
        stack.extend((c, cat) for c in children)
    total = sum(cats.values()) or 1e-9
    busy = total - cats.get("idle (epoll wait)", 0.0)

    def per_msg(seconds: float) -> float | None:
        return round(seconds / messages * 1e6, 2) if messages else None

    return {
        "profiled_s": round(total, 3),
        "busy_s": round(busy, 3),
        "messages": messages,
        "busy_us_per_message": per_msg(busy),
        "categories": [
            {
                "category": c,
                "s": round(s, 4),
                "pct": round(100 * s / total, 1),
                "us_per_msg": per_msg(s),
            }
            for c, s in cats.most_common()
        ],
        "top_functions": [
            {
                "function": f,
                "s": round(s, 4),
                "pct": round(100 * s / total, 1),
                "us_per_msg": per_msg(s),
            }
            for f, s in funcs.most_common(25)
        ],
    }


def _short(path: str | None) -> str:
    if not path:
        return "?"
    for marker in ("site-packages/", "src/", "lib/python3.11/", "lib/python3.12/", "main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summary_table(summary: dict[str, Any], limit: int = 18) -> str:
    from benchmarks.common import table

    rows = [
        (
            c["category"],
            f"{c['pct']:.1f}%",
            "-" if c["us_per_msg"] is None else f"{c['us_per_msg']:.2f}",
        )
        for c in summary["categories"][:limit]
    ]
    return table(("category (innermost match)", "share", "µs/msg"), rows)


def text_of(profiler: Any) -> str:
    return str(profiler.output_text(unicode=True, color=False, show_all=False, timeline=False))


def run_stop(out: Path, args: list[str]) -> int:
    """``metrobus run ARGS`` under pyinstrument; writes the summary and the tree to ``out``."""
    from pyinstrument import Profiler

    from metrobus.cli import cli

    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    code = 0
    try:
        cli.main(args=["run", *args], prog_name="metrobus", standalone_mode=False)
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        profiler.stop()
        session = profiler.last_session
        doc = {"summary": summarize(session.root_frame()), "text": text_of(profiler)}
        out.write_bytes(orjson.dumps(doc))
    return code


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "run-stop" and sys.argv[3] == "--":
        sys.exit(run_stop(Path(sys.argv[2]), sys.argv[4:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
