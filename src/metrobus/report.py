"""The stats document as a terminal table (``metrobus stats``, ``metrobus dev``)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def stats_table(doc: dict[str, Any], rates: dict[str, float] | None = None) -> Table:
    """One row per stop in route order, then the pipeline totals as the caption."""
    table = Table(
        title="metrobus" + (f" [{doc['namespace']}]" if doc.get("namespace") else ""),
        title_justify="left",
    )
    for col in ("stop", "kind", "workers", "in", "out", "delivered", "dropped", "errors"):
        table.add_column(col, justify="left" if col in ("stop", "kind") else "right")
    if rates is not None:
        table.add_column("in/s", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("drop reasons")
    for name in doc["route_order"]:
        s = doc["stops"][name]
        reasons = ", ".join(f"{r}: {n:,}" for r, n in s["drop_reasons"].items())
        row = [
            name,
            s["kind"],
            str(s["workers"]),
            f"{s['in']:,}",
            f"{s['out']:,}",
            f"[green]{s['delivered']:,}[/]",
            f"[yellow]{s['dropped']:,}[/]",
            f"[red]{s['errors']:,}[/]" if s["errors"] else "0",
        ]
        if rates is not None:
            row.append(f"{rates.get(name, 0.0):,.0f}")
        row += [f"{s['latency_ms']['p50']:.1f}", f"{s['latency_ms']['p99']:.1f}", reasons]
        table.add_row(*row)
    p = doc["pipeline"]
    table.caption = (
        f"pushed {p['pushed']:,} = delivered {p['delivered']:,} + dropped {p['dropped']:,} "
        f"+ errors {p['errors']:,} + in flight {p['in_flight']:,}   "
        f"end-to-end p50 {p['e2e_latency_ms']['p50']:.1f} ms, "
        f"p99 {p['e2e_latency_ms']['p99']:.1f} ms"
    )
    table.caption_justify = "left"
    return table
