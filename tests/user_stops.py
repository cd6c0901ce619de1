"""User stops used by the tests, as a user would write them."""

from __future__ import annotations

from typing import Any

from metrobus import Context, Drop


async def tag_vip(payload: dict[str, Any], ctx: Context) -> dict[str, Any] | Drop:
    """Detour VIP accounts through an Audit stop; drop test accounts; fail on demand."""
    if payload.get("explode"):
        raise ValueError("asked to explode")
    if payload.get("huge"):
        payload["blob"] = "x" * 2_000_000  # more than any broker takes by default
    if payload.get("unencodable"):
        payload["tags"] = {"a set", "is not JSON"}
    if payload.get("test_account"):
        return ctx.drop("test account")
    if payload.get("vip"):
        ctx.detour("Audit")
    payload["tagged"] = True
    return payload


async def audit(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    payload["audited_by"] = ctx.stop
    return payload
