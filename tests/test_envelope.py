from __future__ import annotations

import orjson
import pytest

from metrobus.envelope import Envelope, decode, parse_json_object
from metrobus.errors import InvalidMessage


def test_wrap_encode_decode_round_trip() -> None:
    env = Envelope.wrap({"x": 1, "account_number": 1000123}, ["AddEmail", "WhiteList", "Log"])
    back = decode(env.encode())
    assert back.id == env.id
    assert len(env.id) == 32
    assert back.route == ["AddEmail", "WhiteList", "Log"]
    assert back.original_route == ["AddEmail", "WhiteList", "Log"]
    assert back.payload == {"x": 1, "account_number": 1000123}
    assert back.created_at == env.created_at > 1_700_000_000_000


def test_wire_format_matches_design() -> None:
    env = Envelope.wrap({"x": 7}, ["WhiteList", "Log"])
    obj = orjson.loads(env.encode())
    assert set(obj) == {"header", "payload"}
    assert set(obj["header"]) == {"id", "route", "original_route", "historical_route", "created_at"}


def test_hop_pops_own_stop_and_records_time() -> None:
    env = Envelope.wrap({}, ["AddEmail", "Log"])
    env.hop("AddEmail", at=123)
    assert env.route == ["Log"]
    assert env.next_stop == "Log"
    assert env.historical_route == [{"stop": "AddEmail", "at": 123}]
    assert env.original_route == ["AddEmail", "Log"]


def test_hop_of_router_does_not_touch_route() -> None:
    env = Envelope.wrap({}, [])
    env.hop("busdriver", at=5)
    assert env.route == []
    assert env.historical_route == [{"stop": "busdriver", "at": 5}]


def test_unknown_header_fields_survive() -> None:
    raw = b'{"header": {"id": "a", "route": ["Log"], "trace": "t-1"}, "payload": {}}'
    env = decode(raw)
    assert env.header()["trace"] == "t-1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty record value"),
        (None, "empty record value"),
        (b"not json at all", "value is not JSON"),
        (b"\xff\xfe\x00garbage", "value is not valid UTF-8"),
        (b"[1, 2, 3]", "JSON value is a list, not an object"),
        (b'"just a string"', "JSON value is a str, not an object"),
        (b'{"header": "nope", "payload": {}}', "header is missing or not an object"),
        (b'{"payload": {}}', "header is missing or not an object"),
        (b'{"header": {"route": "Log"}, "payload": {}}', "header.route is not a list of strings"),
        (
            b'{"header": {"route": ["Log", 3]}, "payload": {}}',
            "header.route is not a list of strings",
        ),
        (b'{"header": {"route": ["Log"]}, "payload": [1]}', "payload is missing or not an object"),
        (
            b'{"header": {"route": ["Log"], "created_at": "x"}, "payload": {}}',
            "header.created_at is not an integer",
        ),
    ],
)
def test_malformed_values_raise_invalid_message(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(value)
    assert info.value.reason.startswith(reason)


def test_parse_json_object_accepts_raw_messages() -> None:
    assert parse_json_object(b'{"x": 1}') == {"x": 1}
