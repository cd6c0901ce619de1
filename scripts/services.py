"""Start and stop the services the tests need: Redis plus a Kafka broker.

``eval "$(python scripts/services.py up --broker tansu --state DIR)"`` leaves them running in
their own sessions and exports their addresses; DIR/services.json tells ``down`` what to stop.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from metrobus.devstack import EmbeddedRedis, EmbeddedTansu, ServiceError, free_port  # noqa: E402
from metrobus.errors import MetrobusError  # noqa: E402

KAFKA = ROOT / "scripts" / "kafka"
SERVERS = {"redis": EmbeddedRedis, "tansu": EmbeddedTansu}  # the kinds with a record()


def say(msg: str) -> None:
    print(f"services: {msg}", file=sys.stderr, flush=True)


def load(state: Path) -> dict[str, Any] | None:
    path = state / "services.json"
    return dict(json.loads(path.read_text())) if path.exists() else None


def save(state: Path, rec: dict[str, Any]) -> None:
    """Write atomically, and after each step of ``up``, so ``down`` undoes a half start."""
    (state / "services.tmp").write_text(json.dumps(rec, indent=2) + "\n")
    (state / "services.tmp").replace(state / "services.json")


def kafka(*args: str) -> None:
    """Run scripts/kafka in its own session (no terminal Ctrl-C), chatter to stderr."""
    run = subprocess.run(["bash", str(KAFKA), *args], stdout=sys.stderr, start_new_session=True)
    if run.returncode != 0:
        raise ServiceError(f"scripts/kafka {' '.join(args)} failed (its output is above)")


def up(state: Path, kind: str) -> None:
    if (state / "services.json").exists():  # down removes it, even after a failed up
        raise ServiceError(f"{state} already has services; run `down --state {state}` first")
    state.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"broker": kind}
    try:
        t0 = time.monotonic()
        redis = EmbeddedRedis(state / "redis")
        redis.start()
        rec["redis"], rec["redis_url"] = redis.detach(), redis.url
        save(state, rec)
        say(f"redis up at {redis.url} in {time.monotonic() - t0:.2f}s")
        t0 = time.monotonic()
        if kind == "tansu":
            tansu = EmbeddedTansu(state / "tansu")
            tansu.start()
            rec["tansu"], rec["bootstrap"] = tansu.detach(), tansu.bootstrap
        elif kind == "apache":
            port = free_port()
            rec["kafka"] = {"dir": str(state / "kafka"), "port": port}
            save(state, rec)
            kafka("start", rec["kafka"]["dir"], str(port))
            rec["bootstrap"] = f"127.0.0.1:{port}"
        else:
            rec["bootstrap"] = os.environ.get("METROBUS_BOOTSTRAP", "")
            if not rec["bootstrap"]:
                raise ServiceError("--broker external needs METROBUS_BOOTSTRAP set")
        save(state, rec)
        say(f"{kind} broker at {rec['bootstrap']} in {time.monotonic() - t0:.2f}s")
    except BaseException:
        down(state)
        raise
    env = {"BOOTSTRAP": rec["bootstrap"], "REDIS_URL": rec["redis_url"], "TEST_BROKER_KIND": kind}
    for name, value in env.items():
        print(f"export METROBUS_{name}={shlex.quote(value)}")


def down(state: Path) -> None:
    """Stop all that is recorded, going on past failures; a second ``down`` is a no-op."""
    rec = load(state) or {}
    errors: list[str] = []
    for key in ("tansu", "kafka", "redis"):
        try:
            if key == "kafka" and key in rec:
                kafka("stop", rec["kafka"]["dir"])
            elif key in rec:
                SERVERS[key].from_record(rec[key]).stop()
        except MetrobusError as e:
            errors.append(f"{key}: {e}")
    (state / "services.json").unlink(missing_ok=True)
    if errors:
        raise ServiceError("; ".join(errors))


def restart(state: Path, what: str) -> None:
    """Same ports. Tansu is memory-only: its topics, records and offsets are gone after this."""
    rec = load(state)
    if rec is None:
        raise ServiceError(f"nothing recorded in {state}; run `up` first")
    t0 = time.monotonic()
    key = "redis" if what == "redis" else "tansu" if "tansu" in rec else "kafka"
    if key in SERVERS:
        server = SERVERS[key].from_record(rec[key])
        server.restart()
        rec[key] = server.detach()
    elif key in rec:  # Apache Kafka: same data dir, so the log survives
        kafka("stop", rec["kafka"]["dir"])
        kafka("start", rec["kafka"]["dir"], str(rec["kafka"]["port"]))
    else:
        raise ServiceError("an external broker cannot be restarted from here")
    save(state, rec)
    say(f"{what} restarted in {time.monotonic() - t0:.2f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "down", "restart-redis", "restart-broker"):
        sub.add_parser(cmd).add_argument("--state", type=Path, required=True, help="state dir")
    sub.choices["up"].add_argument(
        "--broker", choices=["tansu", "apache", "external"], default="tansu"
    )
    args = parser.parse_args()
    state: Path = args.state.resolve()
    try:
        if args.cmd == "up":
            up(state, args.broker)
        elif args.cmd == "down":
            down(state)
        else:
            restart(state, args.cmd.removeprefix("restart-"))
    except MetrobusError as e:
        say(f"error: {e}")
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
