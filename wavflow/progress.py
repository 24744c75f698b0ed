"""Progress reports that suit where they go: a live tqdm bar on a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns many times a second; written to a file or a
pipe (a CI log, `nohup`, `tee`), those redraws become thousands of lines of noise. When stderr
is not a terminal, `progress_bar` returns a `LineProgress` instead, which writes one ordinary
line every tenth of the total or every `LINE_EVERY_SECONDS`, whichever comes first, and one at
the end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

# A log line at least this often (seconds), however slowly the work goes.
LINE_EVERY_SECONDS = 30.0
# Lines per run when the total is known: one every tenth of it.
LINES_PER_TOTAL = 10
LINE_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
OPEN_LINE_FORMAT = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"  # no total known


class LineProgress:
    """A progress report for logs: the subset of tqdm's interface this package uses
    (iteration, `update`, `set_postfix`, `close`), written as whole lines.

    Args:
        iterable: items to pass through, counting one update each; None to call `update`.
        total: expected number of updates (default: `len(iterable)` where it has one).
        desc: the label that starts each line.
        unit: what one update is (shown in the rate).
        initial: the count to start from (a resumed run).
        file: where lines go (default: `sys.stderr` at construction).
        every: updates between lines (default: a tenth of `total`; without a total, only
            time triggers lines).
        every_seconds: the longest time between lines (default `LINE_EVERY_SECONDS`).
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        file: TextIO | None = None,
        every: int | None = None,
        every_seconds: float | None = None,
    ) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._written_n = self._initial = initial
        self.file = file if file is not None else sys.stderr
        self.every = every or (max(1, math.ceil(total / LINES_PER_TOTAL)) if total else math.inf)
        self.every_seconds = LINE_EVERY_SECONDS if every_seconds is None else every_seconds
        self.postfix = ""
        self._start = self._written_at = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count `n` more; write a line when `every` updates or `every_seconds` have passed."""
        self.n += n
        now = time.monotonic()
        if self.n - self._written_n >= self.every or now - self._written_at >= self.every_seconds:
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line, as tqdm shows them (`loss=0.123`)."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Write the final count, unless the last line already showed it."""
        if not self._closed and self.n != self._written_n:
            self._write(time.monotonic())
        self._closed = True

    def _write(self, now: float) -> None:
        line = tqdm.format_meter(
            self.n,
            self.total,
            now - self._start,
            prefix=self.desc,
            unit=self.unit,
            postfix=self.postfix or None,
            initial=self._initial,
            bar_format=LINE_FORMAT if self.total else OPEN_LINE_FORMAT,
        )
        self.file.write(line + "\n")
        self.file.flush()
        self._written_n, self._written_at = self.n, now


def progress_bar(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
) -> tqdm | LineProgress:
    """A tqdm bar when stderr is a terminal, else a `LineProgress` (same arguments).

    Args:
        iterable: items to pass through (one update each), or None to call `update`.
        total: expected number of updates (default: `len(iterable)`).
        desc: label of the bar or of each line.
        unit: what one update is.
        initial: the count to start from.
        disable: no output at all (the iterable still passes through).
    """
    if disable or sys.stderr.isatty():
        return tqdm(iterable, desc, total, unit=unit, initial=initial, disable=disable)
    return LineProgress(iterable, total, desc, unit, initial)
