"""Enrich: look a payload field up in Redis and merge the value in.

``redis_key`` is a template where ``{}`` is the key field's value; lookups of
a batch are coalesced into one MGET by the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metrobus.context import Context, Drop
from metrobus.envelope import Payload
from metrobus.errors import InvalidMessage

if TYPE_CHECKING:
    from metrobus.stops import Options, Stop


def build(name: str, opts: Options) -> Stop:
    from metrobus.stops import Stop

    key_field: str = opts.get("key_field", str)
    template: str = opts.get("redis_key", str)
    if "{}" not in template:
        raise opts._error("option 'redis_key' must contain {} where the key goes")
    target: str = opts.get("target_field", str)
    on_miss = opts.choice("on_miss", ("drop", "pass"), "drop")
    miss_reason = f"no {target} for {key_field}"

    async def enrich(payload: Payload, ctx: Context) -> Payload | Drop:
        key = payload.get(key_field)
        if key is None or isinstance(key, (dict, list)):
            raise InvalidMessage(f"payload has no usable {key_field!r} field")
        value = await ctx.get(template.replace("{}", str(key)))
        if value is None:
            return ctx.drop(miss_reason) if on_miss == "drop" else payload
        payload[target] = value
        return payload

    return Stop(name, "enrich", enrich, name, needs_store=True)
