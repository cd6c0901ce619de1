"""Kafka, the dumb bus: the only module that imports aiokafka.

It makes consumers and producers with metrobus' delivery settings, creates
topics, and waits (with a log line per attempt) for a broker that is not up
yet. Producers are never idempotent or transactional: the embedded Tansu
broker rejects both, and at-least-once with counted duplicates is the contract.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from metrobus.errors import MetrobusError, ServiceUnavailable
from metrobus.retry import until_up

__all__ = [
    "ConsumerRebalanceListener",
    "KafkaError",
    "TopicPartition",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "start_with_retry",
]

log = logging.getLogger(__name__)


def make_consumer(
    bootstrap: str,
    topic: str,
    group: str,
    max_records: int,
    listener: ConsumerRebalanceListener | None = None,
    session_timeout_ms: int = 10_000,
) -> AIOKafkaConsumer:
    """A group consumer that never auto-commits and starts a new group at the earliest offset.

    ``session_timeout_ms`` bounds how fast a dead member is noticed; Tansu also
    holds every join for half of it, so the embedded broker runs with less.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        fetch_max_wait_ms=10,  # Tansu holds every fetch this long: it is per-hop latency
        max_partition_fetch_bytes=4 * 1024 * 1024,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(session_timeout_ms // 5, 100),
        max_poll_interval_ms=600_000,
        request_timeout_ms=20_000,
        retry_backoff_ms=200,
    )
    consumer.subscribe([topic], listener=listener)
    return consumer


def make_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer acknowledged by all in-sync replicas (not idempotent: see module doc)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=20_000,
        retry_backoff_ms=200,
    )


async def start_with_retry(client: Any, bootstrap: str, timeout: float, what: str) -> None:
    """``await client.start()`` until the broker answers or ``timeout`` passes."""
    await until_up(client.start, (KafkaError,), f"Kafka at {bootstrap} ({what})", timeout)


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int,
    timeout: float,
    min_partitions: dict[str, int] | None = None,
) -> None:
    """Create missing topics with ``partitions`` partitions; grow those that need more.

    Already-existing topics are left alone unless ``min_partitions`` asks for
    more partitions than they have (``--replicas`` needs one per worker).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await start_with_retry(admin, bootstrap, timeout, "admin client")
    try:
        wanted = sorted(set(topics))
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            new = [
                NewTopic(t, max(partitions, (min_partitions or {}).get(t, 0)), 1) for t in missing
            ]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # a sibling process created it first
            log.info("created topics %s", ", ".join(missing))
        for topic, needed in (min_partitions or {}).items():
            if topic in missing:
                continue
            described = await admin.describe_topics([topic])
            have = len(described[0].get("partitions", [])) if described else 0
            if 0 < have < needed:
                await admin.create_partitions({topic: NewPartitions(needed)})
                log.info("grew topic %s from %d to %d partitions", topic, have, needed)
    except KafkaConnectionError as exc:
        raise ServiceUnavailable(
            f"Kafka at {bootstrap} failed while creating topics: {exc}"
        ) from exc
    except KafkaError as exc:
        raise MetrobusError(f"cannot create topics at {bootstrap}: {exc}") from exc
    finally:
        await admin.close()
