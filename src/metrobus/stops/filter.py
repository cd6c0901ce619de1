"""Filter: keep or drop a message by a field's membership in a Redis set.

``mode = "allow"`` keeps members (an allow-list), ``"deny"`` drops them.
Membership checks of a batch are coalesced into one SMISMEMBER.
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

    field: str = opts.get("field", str)
    set_key: str = opts.get("redis_set", str)
    mode = opts.choice("mode", ("allow", "deny"), "allow")
    mark: str | None = opts.get("mark_field", str, None)
    reason = f"{field} not on allow list" if mode == "allow" else f"{field} on deny list"

    async def check(payload: Payload, ctx: Context) -> Payload | Drop:
        value = payload.get(field)
        if value is None or isinstance(value, (dict, list)):
            raise InvalidMessage(f"payload has no usable {field!r} field")
        member = await ctx.is_member(set_key, str(value))
        if member != (mode == "allow"):
            return ctx.drop(reason)
        if mark:
            payload[mark] = True
        return payload

    return Stop(name, "filter", check, name, needs_store=True)
