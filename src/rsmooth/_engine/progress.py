"""Progress of long work on stderr: tqdm when installed (the ``progress`` extra), else a plain line.

One helper for every long-running call: certification calls (counted in samples), the dataset
runner and the training tables (counted in inputs, with the sampling rate and the time left).
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Shows ``done / total`` units, the samples per second and the time left.

    Args:
        total: Units to do (None when unknown).
        desc: Label in front of the line.
        unit: What is counted (``"sample"``, ``"row"``, ``"input"``).
        initial: Units already done (a resumed run).
        enabled: False makes every method a no-op (it still counts).
        stream: Where to write. Default: ``sys.stderr``.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "sample",
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.initial = initial
        self.done = 0  # units done in this session
        self.samples = 0
        self.start = time.perf_counter()
        self.last = 0.0
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=desc,
                    unit=unit,
                    unit_scale=unit == "sample",
                    file=self.stream,
                    dynamic_ncols=True,
                )

    def update(self, units: int, samples: int) -> None:
        """``units`` more done, ``samples`` more noisy samples drawn."""
        self.done += units
        self.samples += samples
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.samples / elapsed
        if self.bar is not None:
            if self.unit != "sample":
                self.bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)
            self.bar.update(units)
            return
        now = time.perf_counter()
        finished = self.total is not None and self.initial + self.done >= self.total
        if now - self.last < (1.0 if self.tty else 10.0) and not finished:
            return
        self.last = now
        line = f"{self.desc}: {self.initial + self.done:,}"
        if self.total is not None:
            line += f"/{self.total:,}"
        line += f" {self.unit}s, {rate:,.0f} samples/s"
        if self.total is not None and self.done:
            left = self.total - self.initial - self.done
            line += f", {timedelta(seconds=round(left * elapsed / self.done))} left"
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        """Finish the bar (a newline after a carriage-return line)."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()
