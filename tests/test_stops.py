"""Built-in stops through the handler API; lookups go to the real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from metrobus.context import Context, Drop
from metrobus.envelope import Envelope
from metrobus.errors import InvalidMessage
from metrobus.settings import Settings, StopConfig
from metrobus.stops import build_stop
from metrobus.stops.router import Rule, choose_route
from metrobus.store import Store

RULES = [
    Rule({"message_type_code": "ALTABC"}, ["AddEmail", "WhiteList", "Log"]),
    Rule({"message_type_code": ["X1", "X2"], "region": "eu"}, ["Geo", "Log"]),
]


@pytest.mark.parametrize(
    ("payload", "route"),
    [
        ({"message_type_code": "ALTABC"}, ["AddEmail", "WhiteList", "Log"]),
        ({"message_type_code": "X2", "region": "eu"}, ["Geo", "Log"]),
        ({"message_type_code": "X2", "region": "us"}, ["Log"]),
        ({"message_type_code": "OTHER"}, ["Log"]),
        ({}, ["Log"]),
    ],
)
def test_router_rules_first_match_wins_else_default(
    payload: dict[str, Any], route: list[str]
) -> None:
    assert choose_route(RULES, ["Log"], payload) == route


def test_router_without_default_has_no_route() -> None:
    assert choose_route(RULES, None, {"message_type_code": "nope"}) is None


async def call(
    stop_config: StopConfig,
    payload: dict[str, Any],
    store: Store | None = None,
    route: list[str] | None = None,
) -> tuple[Any, Envelope]:
    stop = build_stop(stop_config)
    env = Envelope.wrap(payload, route if route is not None else [stop_config.name, "Log"])
    env.hop(stop_config.name)
    return await stop.handler(env.payload, Context(stop.name, env, store)), env


async def test_router_stop_writes_route_and_original_route(settings: Settings) -> None:
    result, env = await call(settings.stop("busdriver"), {"message_type_code": "ALTABC"}, route=[])
    assert result == {"message_type_code": "ALTABC"}
    assert env.route == env.original_route == ["AddEmail", "WhiteList", "Log"]
    assert env.historical_route[0]["stop"] == "busdriver"


async def test_enrich_adds_email_or_drops(
    settings: Settings, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(f"{namespace}:email:1000001", "a@example.com")
    store = Store(redis_client, f"{namespace}:")
    config = settings.stop("AddEmail")
    hit, _ = await call(config, {"account_number": 1000001}, store)
    miss, _ = await call(config, {"account_number": 1000002}, store)
    assert hit == {"account_number": 1000001, "email": "a@example.com"}
    assert miss == Drop("no email for account_number")
    with pytest.raises(InvalidMessage, match="no usable 'account_number'"):
        await call(config, {"x": 1}, store)


async def test_enrich_on_miss_pass_forwards_unchanged(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    config = StopConfig(
        "E",
        "enrich",
        {"key_field": "k", "redis_key": "v:{}", "target_field": "v", "on_miss": "pass"},
    )
    result, _ = await call(config, {"k": "absent"}, Store(redis_client, f"{namespace}:"))
    assert result == {"k": "absent"}


async def test_filter_allow_and_deny(
    settings: Settings, redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.sadd(f"{namespace}:whitelist", "ok@example.com")
    store = Store(redis_client, f"{namespace}:")
    allow = settings.stop("WhiteList")
    kept, _ = await call(allow, {"email": "ok@example.com"}, store)
    dropped, _ = await call(allow, {"email": "no@example.com"}, store)
    assert kept == {"email": "ok@example.com", "whitelist": True}
    assert dropped == Drop("email not on allow list")
    deny = StopConfig("D", "filter", {"field": "email", "redis_set": "whitelist", "mode": "deny"})
    denied, _ = await call(deny, {"email": "ok@example.com"}, store)
    passed, _ = await call(deny, {"email": "no@example.com"}, store)
    assert denied == Drop("email on deny list")
    assert passed == {"email": "no@example.com"}
    with pytest.raises(InvalidMessage, match="no usable 'email'"):
        await call(allow, {"account_number": 1}, store)


async def test_sink_writes_one_json_line_per_envelope(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    config = StopConfig("Log", "sink", {"path": str(path)})
    stop = build_stop(config)
    for i in range(3):
        env = Envelope.wrap({"x": i}, ["Log"])
        env.hop("Log")
        await stop.handler(env.payload, Context("Log", env, None))
    stop.close()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["payload"]["x"] for line in lines] == [0, 1, 2]
    assert all(line["header"]["route"] == [] for line in lines)
    assert lines[0]["header"]["historical_route"][-1]["stop"] == "Log"


async def test_user_stop_changes_the_route(settings: Settings) -> None:
    config = StopConfig("tag", "python", {"handler": "tests.user_stops:tag_vip"})
    result, env = await call(config, {"vip": True}, route=["tag", "Log"])
    assert result["tagged"] is True
    assert env.route == ["Audit", "Log"]
    dropped, _ = await call(config, {"test_account": True}, route=["tag", "Log"])
    assert dropped == Drop("test account")


async def test_context_route_operations() -> None:
    env = Envelope.wrap({}, ["A", "B", "C"])
    env.hop("A")
    ctx = Context("A", env, None)
    ctx.detour("X", "Y")
    assert ctx.route == ["X", "Y", "B", "C"]
    assert ctx.skip("B")
    assert not ctx.skip("Z")
    assert ctx.route == ["X", "Y", "C"]
    ctx.set_route(["Q"])
    assert env.route == ["Q"]
    ctx.finish()
    assert env.next_stop is None
    with pytest.raises(TypeError):
        ctx.detour("")


async def test_lookups_of_a_batch_share_one_round_trip(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.mset({f"{namespace}:k{i}": str(i) for i in range(0, 1000, 2)})
    await redis_client.sadd(f"{namespace}:s", *[str(i) for i in range(0, 1000, 3)])
    store = Store(redis_client, f"{namespace}:")

    async def both(i: int) -> tuple[str | None, bool]:
        return await store.get(f"k{i}"), await store.is_member("s", str(i))

    results = await asyncio.gather(*(both(i) for i in range(1000)))
    assert results == [(str(i) if i % 2 == 0 else None, i % 3 == 0) for i in range(1000)]
    # one pipelined round trip for the 1,000 GETs, one for the 1,000 memberships
    assert store.round_trips == 2


async def test_a_bad_lookup_fails_only_its_own_handler(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    await redis_client.set(f"{namespace}:k", "v")
    store = Store(redis_client, f"{namespace}:")
    results = await asyncio.gather(
        store.get("k"),
        store.get(None),
        store.is_member("s", 3),
        return_exceptions=True,  # type: ignore[arg-type]
    )
    assert results[0] == "v"
    assert isinstance(results[1], TypeError)
    assert isinstance(results[2], TypeError)
