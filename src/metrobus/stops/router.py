"""The router ("bus driver"): wraps raw messages and writes their route.

Rules are tried in order; the first whose ``match`` fields all equal the
payload's (a list means "any of") gives the route, else ``default``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metrobus.context import Context, Drop
from metrobus.envelope import Payload

if TYPE_CHECKING:
    from metrobus.stops import Options, Stop


@dataclass(frozen=True)
class Rule:
    match: dict[str, Any]
    route: list[str]

    def matches(self, payload: Payload) -> bool:
        for field, wanted in self.match.items():
            value = payload.get(field)
            if isinstance(wanted, list):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
        return True


def choose_route(
    rules: list[Rule], default: list[str] | None, payload: Payload
) -> list[str] | None:
    """The route of the first matching rule, else ``default`` (None: no route)."""
    for rule in rules:
        if rule.matches(payload):
            return rule.route
    return default


def build(name: str, opts: Options) -> Stop:
    from metrobus.stops import Stop

    rules = []
    for i, raw in enumerate(opts.get("rules", list, [])):
        if not isinstance(raw, dict) or not isinstance(raw.get("match"), dict):
            raise opts._error(f"rules[{i}] needs a 'match' table and a 'route' list")
        rules.append(
            Rule(match=dict(raw["match"]), route=opts.route(f"rules[{i}].route", raw.get("route")))
        )
    default_raw = opts.get("default", list, None)
    default = None if default_raw is None else opts.route("default", default_raw)

    async def route_message(payload: Payload, ctx: Context) -> Payload | Drop:
        route = choose_route(rules, default, payload)
        if route is None:
            return ctx.drop("no routing rule matched")
        ctx.set_route(list(route))
        return payload

    return Stop(name, "router", route_message, name, wraps_raw=True)
