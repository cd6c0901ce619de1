"""Shared fixtures: real Kafka and Redis (started by scripts/test), one namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from metrobus.settings import Settings, StopConfig, load_settings
from tests.helpers import Processes

ROOT = Path(__file__).resolve().parent.parent
# Tansu holds each group join for half the session timeout; Apache Kafka's minimum is 6 s.
SESSION_TIMEOUT_MS = {"tansu": 2000, "apache": 6000, "external": 10_000}


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Where the real broker and Redis are; scripts/test exports these.

    Also sets METROBUS_SESSION_TIMEOUT_MS for the `metrobus` subprocesses of tests.
    """
    bootstrap = os.environ.get("METROBUS_BOOTSTRAP")
    redis_url = os.environ.get("METROBUS_REDIS_URL")
    if not bootstrap or not redis_url:
        pytest.fail(
            "integration tests need METROBUS_BOOTSTRAP and METROBUS_REDIS_URL: "
            "run them with scripts/test, which starts Kafka and Redis"
        )
    kind = os.environ.get("METROBUS_TEST_BROKER_KIND", "external")
    os.environ.setdefault("METROBUS_SESSION_TIMEOUT_MS", str(SESSION_TIMEOUT_MS[kind]))
    return {"bootstrap": bootstrap, "redis_url": redis_url, "kind": kind}


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sink_path(tmp_path: Path) -> Path:
    return tmp_path / "log.jsonl"


@pytest.fixture
def settings(services: dict[str, str], namespace: str, sink_path: Path) -> Settings:
    """The repository's metrobus.toml in a fresh namespace, the sink writing to a file."""
    base = load_settings(
        ROOT / "metrobus.toml",
        {},
        bootstrap=services["bootstrap"],
        redis_url=services["redis_url"],
        namespace=namespace,
        connect_timeout=30.0,
        commit_interval=0.3,
        session_timeout_ms=SESSION_TIMEOUT_MS[services["kind"]],
    )
    return base.with_stop(StopConfig("Log", "sink", {"path": str(sink_path)}))


@pytest.fixture
async def redis_client(services: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(services["redis_url"], decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def procs(tmp_path: Path, namespace: str) -> Iterator[Processes]:
    """`metrobus` subprocesses of one test; SIGTERMed at the end."""
    p = Processes(tmp_path, namespace)
    yield p
    p.terminate()
