"""What one input record becomes: forwarded, delivered, dropped or a dead letter.

Dead letters carry the failing stop, the reason, the exception type, the
route as received (so the message can be replayed to that stop) and the
original value: as JSON when it was JSON, else base64; omitted (with its
size) when too large to fit a Kafka record comfortably.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from metrobus.envelope import now_ms, parse_json_object
from metrobus.errors import InvalidMessage

#: Originals above this size are left out of dead letters (the record stays in its topic).
MAX_ORIGINAL_BYTES = 256 * 1024


@dataclass(slots=True)
class Output:
    """An outcome, and maybe a record to produce to ``topic``.

    ``detail`` is the next stop (forwarded), the creation time (delivered),
    the reason (dropped) or the dead-letter summary (error).
    """

    outcome: str
    detail: Any
    record: Any = None
    topic: str | None = None
    value: bytes | None = None

    @property
    def key(self) -> bytes | None:
        return self.record.key if self.record is not None else None


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, InvalidMessage):
        return exc.reason
    return str(exc) or type(exc).__name__


def dead_letter(
    stop: str,
    topic: str,
    record: Any,
    exc: BaseException,
    route: list[str],
    *,
    original: bool = True,
) -> Output:
    """The dead letter of ``record`` for ``exc``, to be produced to ``topic``."""
    info = {
        "stop": stop,
        "reason": reason_of(exc),
        "error_type": type(exc).__name__,
        "route": route,
        "at": now_ms(),
        "key": record.key.decode("utf-8", "replace") if record.key else None,
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
    }
    body: dict[str, Any] = {"dead_letter": info}
    value = record.value or b""
    if not original or len(value) > MAX_ORIGINAL_BYTES:
        body["original_omitted_bytes"] = len(value)
    else:
        try:
            body["original"] = parse_json_object(value)
        except InvalidMessage:
            body["original_base64"] = base64.b64encode(value).decode()
    return Output("error", info, record, topic, orjson.dumps(body))
