"""The envelope: one JSON object per Kafka record, a routing slip plus a payload.

``route`` lists the stops still to visit; while a message waits in a stop's
topic that stop is ``route[0]``. Decoding is strict: anything that is not a
well-formed envelope raises ``InvalidMessage`` with a reason fit for a dead
letter.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from metrobus.errors import InvalidMessage

Payload = dict[str, Any]


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, the unit of every timestamp."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Envelope:
    """A message in flight: header fields plus the payload.

    Mutable on purpose: a stop pops itself off ``route`` and appends its hop
    to ``historical_route`` before producing the message onwards.
    """

    id: str
    route: list[str]
    payload: Payload
    original_route: list[str] = field(default_factory=list)
    historical_route: list[dict[str, Any]] = field(default_factory=list)
    created_at: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def wrap(cls, payload: Payload, route: list[str] | None = None) -> Envelope:
        """A new envelope around a raw payload (what the router does)."""
        ts = now_ms()
        route = list(route or [])
        return cls(
            id=os.urandom(16).hex(),  # as unique as uuid4, four times cheaper
            route=route,
            payload=payload,
            original_route=list(route),
            historical_route=[],
            created_at=ts,
        )

    def hop(self, stop: str, at: int | None = None) -> None:
        """Record that ``stop`` handled the message (and remove it from the route)."""
        if self.route and self.route[0] == stop:
            del self.route[0]
        self.historical_route.append({"stop": stop, "at": now_ms() if at is None else at})

    @property
    def next_stop(self) -> str | None:
        return self.route[0] if self.route else None

    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = dict(self.extra)
        header.update(
            id=self.id,
            route=self.route,
            original_route=self.original_route,
            historical_route=self.historical_route,
            created_at=self.created_at,
        )
        return header

    def to_dict(self) -> dict[str, Any]:
        return {"header": self.header(), "payload": self.payload}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())


def parse_json_object(value: bytes | None) -> dict[str, Any]:
    """Decode a record value that must be one UTF-8 JSON object."""
    if not value:
        raise InvalidMessage("empty record value")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(
            f"value is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"value is not JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise InvalidMessage(f"JSON value is a {type(obj).__name__}, not an object")
    return obj


def _string_list(header: dict[str, Any], name: str, *, required: bool) -> list[str]:
    value = header.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidMessage(f"header.{name} is not a list of strings")
    return value


def from_object(obj: dict[str, Any]) -> Envelope:
    """Validate a decoded JSON object as an envelope."""
    header = obj.get("header")
    if not isinstance(header, dict):
        raise InvalidMessage("header is missing or not an object")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise InvalidMessage("payload is missing or not an object")
    route = _string_list(header, "route", required=True)
    history = header.get("historical_route", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise InvalidMessage("header.historical_route is not a list of objects")
    msg_id = header.get("id")
    created = header.get("created_at", 0)
    if not isinstance(created, int):
        raise InvalidMessage("header.created_at is not an integer")
    extra = {
        k: v
        for k, v in header.items()
        if k not in ("id", "route", "original_route", "historical_route", "created_at")
    }
    return Envelope(
        id=str(msg_id) if msg_id is not None else uuid.uuid4().hex,
        route=route,
        payload=payload,
        original_route=_string_list(header, "original_route", required=False),
        historical_route=history,
        created_at=created,
        extra=extra,
    )


def decode(value: bytes | None) -> Envelope:
    """Decode a record value as an envelope, or raise ``InvalidMessage``."""
    return from_object(parse_json_object(value))


def is_envelope(obj: dict[str, Any]) -> bool:
    """Whether a decoded object claims to be an envelope (has a header key)."""
    return "header" in obj
