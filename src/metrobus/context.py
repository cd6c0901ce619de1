"""What a handler gets besides its payload: lookups, the route, and drops.

A handler is ``async def handler(payload, ctx) -> payload | Drop``. Returning
the payload forwards the message to the next stop on its route; returning
``ctx.drop("reason")`` drops it; raising makes it a dead letter. Changing the
remaining route (a detour, a skip, a new route) is how a stop is "smart".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from metrobus.envelope import Envelope, Payload

if TYPE_CHECKING:
    from metrobus.store import Store


@dataclass(frozen=True, slots=True)
class Drop:
    """A decision not to forward a message; counted per stop and per reason."""

    reason: str


Result: TypeAlias = "Payload | Drop"
Handler: TypeAlias = Callable[[Payload, "Context"], Awaitable["Payload | Drop"]]


class NoStoreError(RuntimeError):
    """A lookup was attempted by a stop hosted without Redis."""


class Context:
    """Per-message view given to a handler. Cheap: one is made per message."""

    __slots__ = ("_store", "envelope", "key", "stop")

    def __init__(
        self, stop: str, envelope: Envelope, store: Store | None, key: bytes | None = None
    ) -> None:
        self.stop = stop
        self.envelope = envelope
        self.key = key
        self._store = store

    # -- the route ---------------------------------------------------------
    @property
    def route(self) -> list[str]:
        """The stops still to visit after this one (a copy; use the methods to change it)."""
        return list(self.envelope.route)

    def set_route(self, stops: list[str]) -> None:
        """Replace the rest of the route (the router does this)."""
        _check_stops(stops)
        self.envelope.route[:] = stops
        if not self.envelope.original_route:
            self.envelope.original_route = list(stops)

    def detour(self, *stops: str) -> None:
        """Visit ``stops`` next, then carry on with the rest of the route."""
        _check_stops(list(stops))
        self.envelope.route[:0] = stops

    def skip(self, stop: str) -> bool:
        """Remove the first occurrence of ``stop`` from the rest of the route."""
        try:
            self.envelope.route.remove(stop)
        except ValueError:
            return False
        return True

    def finish(self) -> None:
        """Deliver the message here: no further stops."""
        self.envelope.route.clear()

    def drop(self, reason: str) -> Drop:
        """``return ctx.drop("why")`` drops the message with that reason."""
        return Drop(reason)

    # -- lookups (coalesced per batch by the Store) ------------------------
    def _need_store(self) -> Store:
        if self._store is None:
            raise NoStoreError(f"stop {self.stop!r} has no Redis store configured")
        return self._store

    async def get(self, key: str) -> str | None:
        """The string value of a Redis key (namespaced), or ``None``."""
        return await self._need_store().get(key)

    async def is_member(self, set_key: str, member: str) -> bool:
        """Whether ``member`` is in the Redis set ``set_key`` (namespaced)."""
        return await self._need_store().is_member(set_key, member)

    async def hget(self, key: str, field: str) -> str | None:
        """One field of a Redis hash (namespaced), or ``None``."""
        return await self._need_store().hget(key, field)

    @property
    def headers(self) -> dict[str, Any]:
        """The envelope header (read it; change the route with the methods)."""
        return self.envelope.header()


def _check_stops(stops: list[str]) -> None:
    if not all(isinstance(s, str) and s for s in stops):
        raise TypeError(f"a route is a list of non-empty stop names, got {stops!r}")
