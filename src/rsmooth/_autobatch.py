"""``batch_size="auto"``: the forward batch size is tuned on the real work.

The sampling engine's noise does not depend on the batch size, so the forward batches of a call
may have any sizes without changing its counts. :class:`AutoBatch` uses that: it asks the engine
to run some of a call's real forward batches at growing candidate sizes, times them, and keeps
the fastest. Nothing is thrown away; the tuning's only cost is the extra time of the batches run
at sizes slower than the best, which it keeps under :data:`BUDGET` of the time of all the rows it
has served (a small call explores a little, and a later call goes on where it stopped).

Timings on a shared machine drift: a slow spell of a second makes whatever runs then look slow.
So a candidate is compared with the best size so far in a *paired* run: their timed batches
alternate, and each one's fastest batch is its time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Candidate forward batch sizes, tried upwards from the device's first one.
CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
FIRST = {"cuda": 128}
FIRST_OTHER = 32
#: The batch size before any has been timed, and while a call is too small to time the next one.
DEFAULT = {"cuda": 1024}
DEFAULT_OTHER = 256
#: Extra time the tuning may cost, as a share of the time of the rows it served.
BUDGET = 0.02
#: In a paired run each size is timed on at least REPEATS batches and MIN_TIMED_ROWS rows (small
#: batches are short, so their timings are noisy), after one warm-up batch of the candidate.
REPEATS = 2
MIN_TIMED_ROWS = 512
#: The search ends at the second paired run in a row in which a candidate is no faster than the
#: best, so no single noisy run ends it. After one such run, a candidate within TOLERANCE of the
#: best (timing noise) gives way to the next candidate; one whose rate is below (1 - TOLERANCE)
#: times the best's (past the peak, or hit by a slow spell that spared the best's batches) is
#: timed again.
TOLERANCE = 0.1
#: Before timing a candidate, its extra time is estimated at this share of its rows' time.
ASSUMED_SLOWDOWN = 0.25


def timed_batches(size: int) -> int:
    """Timed batches of ``size`` rows in a paired run."""
    return max(REPEATS, math.ceil(MIN_TIMED_ROWS / size))


@dataclass(slots=True)
class AutoBatch:
    """The batch-size search for one input shape, dtype and device.

    The engine asks :meth:`next_size` before filling each forward batch, reports the forward time
    of a timed batch with :meth:`record`, and an out-of-memory error with :meth:`out_of_memory`.
    Once :attr:`choice` is set the search has settled.
    """

    candidates: tuple[int, ...]
    default: int
    index: int = 0  # the candidate being timed
    warmed: bool = False  # its warm-up batch ran
    # per-row seconds of the timed batches of the candidate and of the best, in this paired run
    trial: list[float] = field(default_factory=list)
    rival: list[float] = field(default_factory=list)
    per_row: dict[int, float] = field(default_factory=dict)  # timed sizes' per-row seconds
    rows: dict[int, int] = field(default_factory=dict)  # rows the search ran at each size
    best: int | None = None  # the fastest size so far
    served: int = 0  # rows of all the calls this search has served
    slower: int = 0  # consecutive paired runs in which a candidate was no faster than the best
    choice: int | None = None

    @classmethod
    def for_device(cls, device_type: str, largest: int | None = None) -> AutoBatch:
        """A new search on a device type; ``largest`` caps the candidates (memory on the CPU)."""
        first = FIRST.get(device_type, FIRST_OTHER)
        candidates = tuple(b for b in CANDIDATES if b >= first)
        if largest is not None:
            candidates = tuple(b for b in candidates if b <= largest) or (max(1, largest),)
        default = DEFAULT.get(device_type, DEFAULT_OTHER)
        return cls(candidates=candidates, default=min(default, candidates[-1]))

    def overhead(self) -> float:
        """Seconds the search's batches took beyond what the best size would have taken."""
        if self.best is None:
            return 0.0
        fastest = self.per_row[self.best]
        return sum(
            rows * (self.per_row.get(size, fastest) - fastest) for size, rows in self.rows.items()
        )

    def begin_call(self, rows: int) -> None:
        """A call of ``rows`` forward rows starts: it adds to the rows the search serves."""
        self.served += rows

    def next_size(self, remaining: int) -> tuple[int, bool]:
        """The size of the next forward batch, and whether it is timed for the search.

        ``remaining`` is the number of rows left in the call. The engine reports the forward
        time of a timed batch with :meth:`record`.
        """
        if self.choice is not None:
            return self.choice, False
        size, best = self.candidates[self.index], self.best
        started = self.warmed
        if not started and not self._affordable(size, remaining):
            return (self.default if best is None else best), False
        if best is not None and started and self._rival_behind(size, best):
            return (best, True) if remaining >= best else (best, False)
        return (size, True) if remaining >= size else (best or self.default, False)

    def _rival_behind(self, size: int, best: int) -> bool:
        """Whether the best size's share of the paired run lags the candidate's."""
        return len(self.rival) / timed_batches(best) < len(self.trial) / timed_batches(size)

    def _affordable(self, size: int, remaining: int) -> bool:
        """Whether to start timing ``size``: the call has its batches, the budget its extra time."""
        rows = (1 + timed_batches(size)) * size
        if self.best is None:
            return remaining >= rows  # the first size: real work, measured as it runs
        rows_best = timed_batches(self.best) * self.best
        if remaining < rows + rows_best:
            return False
        fastest = self.per_row[self.best]
        estimate = ASSUMED_SLOWDOWN * rows * fastest
        return self.overhead() + estimate <= BUDGET * self.served * fastest

    def record(self, size: int, seconds: float) -> None:
        """The forward time of a timed batch of ``size`` rows."""
        if self.choice is not None:
            return
        self.rows[size] = self.rows.get(size, 0) + size
        candidate = self.candidates[self.index]
        if size == candidate:
            if not self.warmed:
                self.warmed = True  # the warm-up batch: not used
                return
            self.trial.append(seconds / size)
        elif size == self.best:
            self.rival.append(seconds / size)
        else:
            return
        done = len(self.trial) >= timed_batches(candidate)
        if done and (self.best is None or len(self.rival) >= timed_batches(self.best)):
            self._finish(candidate)

    def _finish(self, size: int) -> None:
        seconds = min(self.trial)
        best, rival = self.best, min(self.rival, default=math.inf)
        self.per_row[size] = seconds
        if best is not None:
            self.per_row[best] = min(self.per_row[best], rival)
        self.warmed, self.trial, self.rival = False, [], []
        if best is None or seconds < rival:
            self.best, self.slower = size, 0
        else:
            self.slower += 1  # no faster: past the peak, or within the timing noise
            if self.slower == 2:
                self.choice = best
                return
            if seconds * (1 - TOLERANCE) > rival:
                return  # clearly slower: the same candidate is timed again
        if self.index + 1 == len(self.candidates):
            self.choice = self.best
        else:
            self.index += 1

    def out_of_memory(self, size: int) -> int:
        """A forward batch of ``size`` rows ran out of memory: the size to use instead."""
        best = self.best
        self.choice = best if best is not None and best < size else max(1, size // 2)
        self.warmed, self.trial, self.rival = False, [], []
        return self.choice
