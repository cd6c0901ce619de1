from __future__ import annotations

import base64
from types import SimpleNamespace

import orjson

from metrobus.errors import InvalidMessage
from metrobus.outcome import MAX_ORIGINAL_BYTES, dead_letter


def record(value: bytes) -> SimpleNamespace:
    return SimpleNamespace(key=b"k1", value=value, topic="AddEmail", partition=2, offset=41)


def test_dead_letter_keeps_json_originals_as_json() -> None:
    out = dead_letter("AddEmail", "Error", record(b'{"a": 1}'), InvalidMessage("bad"), ["AddEmail"])
    body = orjson.loads(out.value or b"")
    assert body["original"] == {"a": 1}
    assert body["dead_letter"]["source"] == {"topic": "AddEmail", "partition": 2, "offset": 41}
    assert (out.outcome, out.topic, out.key) == ("error", "Error", b"k1")


def test_dead_letter_keeps_other_bytes_as_base64() -> None:
    out = dead_letter("S", "Error", record(b"\xff\x00"), InvalidMessage("utf8"), [])
    assert base64.b64decode(orjson.loads(out.value or b"")["original_base64"]) == b"\xff\x00"


def test_dead_letter_leaves_out_oversized_originals() -> None:
    big = b"\xff" * (MAX_ORIGINAL_BYTES + 1)
    out = dead_letter("S", "Error", record(big), ValueError("x"), ["S"])
    body = orjson.loads(out.value or b"")
    assert body["original_omitted_bytes"] == len(big)
    assert "original" not in body
    assert "original_base64" not in body
    assert len(out.value or b"") < 2000
