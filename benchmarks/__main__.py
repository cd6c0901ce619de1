"""``python -m benchmarks NAME [options]`` — normally through ``scripts/bench``.

NAME: stop_vs_handwritten, pipeline, latency, or all (each with its defaults).
Needs METROBUS_BOOTSTRAP and METROBUS_REDIS_URL (scripts/bench sets them).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from benchmarks.common import say, stop_all_children

NAMES = ("stop_vs_handwritten", "pipeline", "latency")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every child is stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in (*NAMES, "all"):
        say(f"unknown benchmark {name!r}; one of {', '.join(NAMES)}, all")
        return 2
    for var in ("METROBUS_BOOTSTRAP", "METROBUS_REDIS_URL"):
        if not os.environ.get(var):
            say(f"{var} is not set: run through scripts/bench, which starts the services")
            return 2
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        for each in NAMES if name == "all" else (name,):
            module = importlib.import_module(f"benchmarks.{each}")
            code = module.main(rest if name != "all" else []) or code
    finally:
        stop_all_children()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
