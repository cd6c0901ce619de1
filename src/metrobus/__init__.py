"""metrobus: smart routing on a dumb bus.

A router stop writes a route into each message's header; every other stop is
a stateless asyncio worker that does one job and forwards the message to the
next stop on its route. User stops are plain ``async def`` handlers::

    async def add_geo(payload, ctx):
        payload["geo"] = await ctx.get(f"geo:{payload['ip']}")
        return payload
"""

from metrobus.context import Context, Drop
from metrobus.envelope import Envelope

__all__ = ["Context", "Drop", "Envelope", "__version__"]
__version__ = "0.1.0"
