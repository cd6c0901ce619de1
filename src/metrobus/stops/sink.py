"""Sink: write each delivered envelope as one JSON line (stdout or a file).

Lines are buffered and flushed once per batch, before offsets are committed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, BinaryIO

import orjson

from metrobus.context import Context, Drop
from metrobus.envelope import Payload
from metrobus.errors import ConfigError

if TYPE_CHECKING:
    from metrobus.stops import Options, Stop


def build(name: str, opts: Options) -> Stop:
    from metrobus.stops import Stop

    path: str = opts.get("path", str, "-")
    out: BinaryIO
    if path == "-":
        out = sys.stdout.buffer
    else:
        try:
            out = open(path, "ab")  # noqa: SIM115 - closed by Stop.close
        except OSError as exc:
            raise ConfigError(
                f"stop {name!r}: cannot open sink file {path}: {exc.strerror}"
            ) from exc

    async def write(payload: Payload, ctx: Context) -> Payload | Drop:
        ctx.finish()
        out.write(orjson.dumps(ctx.envelope.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
        return payload

    def close() -> None:
        out.flush()
        if path != "-":
            out.close()

    return Stop(name, "sink", write, name, flush=out.flush, close=close)
