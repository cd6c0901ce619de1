"""The runner against the real broker and Redis: outcomes, dead letters, order, commits."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from metrobus.envelope import Envelope
from metrobus.runner import StopRunner
from metrobus.settings import Settings, resolve_stop
from metrobus.stops import build_stop
from tests.helpers import assert_balanced, produce, read_topic, running, stats, wait_until


def envelope(payload: dict[str, Any], route: list[str]) -> bytes:
    return Envelope.wrap(payload, route).encode()


MALFORMED: list[tuple[bytes, str]] = [
    (b"this is not json", "value is not JSON"),
    (b"\xff\xfe\xfd", "value is not valid UTF-8"),
    (b"", "empty record value"),
    (b"[1, 2, 3]", "JSON value is a list, not an object"),
    (b'{"header": 7, "payload": {}}', "header is missing or not an object"),
    (b'{"header": {"route": "AddEmail"}, "payload": {}}', "header.route is not a list of strings"),
    (envelope({"x": 1}, ["AddEmail", "Log"]), "payload has no usable 'account_number' field"),
    (
        envelope({"account_number": 1}, ["WhiteList", "Log"]),
        "route starts with WhiteList, not this stop",
    ),
]


async def test_each_malformed_input_becomes_a_dead_letter(
    settings: Settings, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(f"{namespace}:email:1000001", "a@example.com")
    good = [
        envelope({"account_number": 1000001}, ["AddEmail", "WhiteList", "Log"]),
        envelope({"account_number": 1000002}, ["AddEmail", "WhiteList", "Log"]),
    ]
    records = [(b"k%d" % i, v) for i, (v, _) in enumerate(MALFORMED)]
    records.insert(3, (b"good1", good[0]))
    records.append((b"good2", good[1]))
    async with running(settings, "AddEmail"):
        await produce(settings, "AddEmail", records)

        async def drained() -> bool:
            doc = await stats(redis_client, settings)
            return doc["stops"].get("AddEmail", {}).get("in", 0) >= len(records)

        await wait_until(drained, 60, "AddEmail to consume every record")
    doc = await stats(redis_client, settings)
    s = doc["stops"]["AddEmail"]
    assert (s["in"], s["out"], s["dropped"], s["errors"]) == (10, 1, 1, 8)
    assert s["drop_reasons"] == {"no email for account_number": 1}

    dead = [orjson.loads(r.value) for r in await read_topic(settings, "Error", 8)]
    by_key = {d["dead_letter"]["key"]: d for d in dead}
    assert len(dead) == 8
    for i, (value, reason) in enumerate(MALFORMED):
        letter = by_key[f"k{i}"]
        assert letter["dead_letter"]["stop"] == "AddEmail"
        assert letter["dead_letter"]["reason"].startswith(reason), letter
        assert letter["dead_letter"]["error_type"] == "InvalidMessage"
        if "original" in letter:
            assert orjson.dumps(letter["original"]) == orjson.dumps(orjson.loads(value))
        else:
            assert base64.b64decode(letter["original_base64"]) == value
    assert by_key["k6"]["dead_letter"]["route"] == ["AddEmail", "Log"]
    assert {d["stop"] for d in doc["dead_letters"]} == {"AddEmail"}

    forwarded = await read_topic(settings, "WhiteList", 1)
    assert len(forwarded) == 1
    assert forwarded[0].key == b"good1"
    env = orjson.loads(forwarded[0].value)
    assert env["payload"]["email"] == "a@example.com"
    assert env["header"]["route"] == ["WhiteList", "Log"]
    assert [h["stop"] for h in env["header"]["historical_route"]] == ["AddEmail"]


async def test_handler_exception_is_a_dead_letter_and_detours_work(
    settings: Settings, redis_client: aioredis.Redis, sink_path: Path
) -> None:
    settings, _tag = resolve_stop(settings, "tests.user_stops:tag_vip", "Tag")
    settings, _ = resolve_stop(settings, "tests.user_stops:audit", "Audit")
    payloads = [
        {"n": 0},
        {"n": 1, "vip": True},
        {"n": 2, "test_account": True},
        {"n": 3, "explode": True},
        {"n": 4, "unencodable": True},
        {"n": 5, "huge": True},
    ]
    async with running(settings, "Tag", "Audit", "Log"):
        await produce(settings, "Tag", [(None, envelope(p, ["Tag", "Log"])) for p in payloads])

        async def delivered() -> bool:
            doc = await stats(redis_client, settings)
            return (
                doc["pipeline"]["delivered"] >= 2 and doc["stops"].get("Tag", {}).get("in", 0) >= 6
            )

        await wait_until(delivered, 60, "two deliveries")
    doc = await stats(redis_client, settings)
    tag_stats = doc["stops"]["Tag"]
    assert (tag_stats["out"], tag_stats["dropped"], tag_stats["errors"]) == (2, 1, 3)
    letters = [orjson.loads(r.value) for r in await read_topic(settings, "Error", 3)]
    huge = [x["dead_letter"] for x in letters if "original_omitted_bytes" in x]
    assert len(huge) == 1
    assert huge[0]["error_type"] == "MessageSizeTooLargeError"
    by_n = {x["original"]["payload"]["n"]: x["dead_letter"] for x in letters if "original" in x}
    assert (by_n[3]["reason"], by_n[3]["error_type"]) == ("asked to explode", "ValueError")
    assert by_n[4]["error_type"] == "TypeError"  # a payload orjson cannot encode
    lines = {
        orjson.loads(x)["payload"]["n"]: orjson.loads(x)
        for x in sink_path.read_bytes().splitlines()
    }
    assert set(lines) == {0, 1}
    assert [h["stop"] for h in lines[1]["header"]["historical_route"]] == ["Tag", "Audit", "Log"]
    assert lines[1]["payload"]["audited_by"] == "Audit"
    assert doc["edges"]["Tag>Audit"] == 1
    assert doc["edges"]["Audit>Log"] == 1


async def test_per_key_order_is_kept_end_to_end(
    settings: Settings, redis_client: aioredis.Redis, sink_path: Path
) -> None:
    keys = [f"acct{i}".encode() for i in range(12)]
    records = [
        (keys[n % 12], orjson.dumps({"x": n, "message_type_code": "OTHER"})) for n in range(3000)
    ]
    async with running(settings, "busdriver", "Log"):
        await produce(settings, "Source", records)

        async def done() -> bool:
            return (await stats(redis_client, settings))["pipeline"]["delivered"] >= 3000

        await wait_until(done, 90, "3,000 deliveries")
    assert_balanced(await stats(redis_client, settings))
    seen: dict[int, list[int]] = {}
    for line in sink_path.read_bytes().splitlines():
        x = orjson.loads(line)["payload"]["x"]
        seen.setdefault(x % 12, []).append(x)
    assert sum(len(v) for v in seen.values()) >= 3000
    for xs in seen.values():
        assert xs == sorted(xs)


async def test_offsets_are_committed_only_after_every_output_is_acknowledged(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    runner = StopRunner(settings, build_stop(settings.stop("busdriver")))
    gate, reached = asyncio.Event(), asyncio.Event()
    real_produce = runner.produce

    async def gated_produce(outputs: list[Any]) -> None:
        reached.set()
        await gate.wait()  # the acknowledgements "have not arrived yet"
        await real_produce(outputs)

    runner.produce = gated_produce  # type: ignore[method-assign]
    await runner.start()
    task = asyncio.create_task(runner.run())
    try:
        await produce(settings, "Source", [(b"k", b'{"message_type_code": "OTHER"}')] * 50)
        await asyncio.wait_for(reached.wait(), 60)
        await asyncio.sleep(1.0)  # several commit intervals pass while the batch waits
        tps = list(runner.consumer.assignment())
        committed = [await runner.consumer.committed(tp) for tp in tps]
        assert all(c in (None, 0) for c in committed), committed
        gate.set()

        async def all_committed() -> bool:
            offsets = [await runner.consumer.committed(tp) or 0 for tp in tps]
            return sum(offsets) == 50

        await wait_until(all_committed, 30, "the commit after the acknowledgements")
        logged = await read_topic(settings, "Log", 50)
        assert len(logged) == 50
    finally:
        gate.set()
        runner.stopping.set()
        await task
        await runner.close()


async def test_http_endpoint_serves_stats_health_and_dashboard(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    import aiohttp

    from metrobus.devstack import free_port

    port = free_port()
    async with running(settings, "Log", http_port=port):
        await produce(settings, "Log", [(b"k", envelope({"n": 1}, ["Log"]))])

        async def delivered() -> bool:
            return (await stats(redis_client, settings))["pipeline"]["delivered"] == 1

        await wait_until(delivered, 60, "one delivery")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                health = await r.json()
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{port}/stats") as r:
                doc = await r.json()
            async with http.get(f"http://127.0.0.1:{port}/") as r:
                page = await r.text()
                assert r.content_type == "text/html"
    assert health["status"] == "ok"
    assert health["redis"] == "ok"
    assert (health["stop"], health["consuming"], health["processed"]) == ("Log", True, 1)
    assert doc["stops"]["Log"]["delivered"] == 1
    assert doc["route_order"] == ["Log"]  # only stops that have run are listed
    assert 'id="total-pushed"' in page
