"""Progress for long work: a rich bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """``with Reporter("pushing", total) as r: r.advance(n)``; total may be None."""

    def __init__(
        self, what: str, total: int | None, every: float = 2.0, enabled: bool = True
    ) -> None:
        self.what, self.total, self.every = what, total, every
        self.done = 0
        self.started = self.last = time.monotonic()
        self.bar: Progress | None = None
        self.task = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> Reporter:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=self.total, rate="")  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{self.rate:,.0f}/s")
        elif self.enabled and now - self.last >= self.every:
            self.last = now
            of = f"/{self.total:,}" if self.total else ""
            print(
                f"{self.what}: {self.done:,}{of} ({self.rate:,.0f}/s)", file=sys.stderr, flush=True
            )
