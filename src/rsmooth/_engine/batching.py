"""The batching policy: how many noisy rows go into one forward pass.

By default the size is fixed per device type (:data:`DEFAULT_BATCH_SIZE`, chosen from measured
throughput on the benchmark models): 128 on the CPU, 2048 on CUDA, where an out-of-memory error
halves it. It never depends on timing, and the counts never depend on it (the noise of a sample
depends only on its input's stream and index).

``batch_size="auto"`` opts in to :class:`AutoBatch`, a search that times some of the calls' own
forward batches at growing candidate sizes and keeps the fastest. Nothing is thrown away; its only
cost is the extra time of the batches run at sizes slower than the best, which it keeps under
:data:`BUDGET` of the time of all the rows it has served. Timings on a shared machine drift, so a
candidate is compared with the best size so far in a *paired* run: their timed batches alternate,
and each one's fastest batch is its time. The clock is injected (tests drive a fake one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "BUDGET",
    "DEFAULT_BATCH_SIZE",
    "AutoBatch",
    "FixedBatch",
    "default_batch_size",
    "policy",
]

#: The default forward batch size per device type (others: :data:`DEFAULT_OTHER`). Measured:
#: LeNet and the CIFAR ResNet-20 on two CPU cores peak at 64 to 256 rows (channels_last), the
#: ResNet-20 on an H200 rises up to 2048.
DEFAULT_BATCH_SIZE = {"cpu": 128, "cuda": 2048}
DEFAULT_OTHER = 512


def default_batch_size(device_type: str) -> int:
    """The default forward batch size on a device type.

    Example:
        >>> default_batch_size("cpu"), default_batch_size("cuda"), default_batch_size("mps")
        (128, 2048, 512)
    """
    return DEFAULT_BATCH_SIZE.get(device_type, DEFAULT_OTHER)


@dataclass(slots=True)
class FixedBatch:
    """A fixed forward batch size; ``halve`` lets an out-of-memory error halve it (the default).

    The same interface as :class:`AutoBatch`: the engine asks :meth:`next_size` before each
    forward batch and reports an out-of-memory error with :meth:`out_of_memory`.
    """

    size: int
    halve: bool = False
    clock: Callable[[], float] = time.perf_counter

    @property
    def choice(self) -> int:
        """The size in use."""
        return self.size

    def begin_call(self, rows: int) -> None:
        """Rows are about to be served (nothing to do for a fixed size)."""

    def target(self) -> int:
        """The batch size the engine should keep enough samples waiting for."""
        return self.size

    def next_size(self, remaining: int) -> tuple[int, bool]:
        """The size of the next forward batch, and False: a fixed size is never timed."""
        return self.size, False

    def record(self, size: int, seconds: float) -> None:
        """A timed batch (never happens for a fixed size)."""

    def out_of_memory(self, size: int) -> int | None:
        """A forward batch of ``size`` rows ran out of memory: half of it, or None (re-raise)."""
        if not self.halve or size <= 1:
            return None
        self.size = max(1, size // 2)
        return self.size


#: Candidate forward batch sizes, tried upwards from the device's first one.
CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
FIRST = {"cuda": 128}
FIRST_OTHER = 32
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
    clock: Callable[[], float] = time.perf_counter

    @classmethod
    def for_device(
        cls,
        device_type: str,
        largest: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> AutoBatch:
        """A new search on a device type; ``largest`` caps the candidates (memory on the CPU).

        Until a size has been timed, batches have the device's default size.
        """
        first = FIRST.get(device_type, FIRST_OTHER)
        candidates = tuple(b for b in CANDIDATES if b >= first)
        if largest is not None:
            candidates = tuple(b for b in candidates if b <= largest) or (max(1, largest),)
        default = min(default_batch_size(device_type), candidates[-1])
        return cls(candidates=candidates, default=default, clock=clock)

    def overhead(self) -> float:
        """Seconds the search's batches took beyond what the best size would have taken."""
        if self.best is None:
            return 0.0
        fastest = self.per_row[self.best]
        return sum(
            rows * (self.per_row.get(size, fastest) - fastest) for size, rows in self.rows.items()
        )

    def target(self) -> int:
        """The batch size the engine should keep enough samples waiting for."""
        if self.choice is not None:
            return self.choice
        return max(self.candidates[self.index], self.default, self.best or 0)

    def begin_call(self, rows: int) -> None:
        """``rows`` forward rows are about to be served: they add to the rows the search serves."""
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


#: The automatic search's largest forward batch of inputs on the CPU (256 MiB).
AUTO_MAX_CPU_BYTES = 2**28


def policy(batch_size: int | str | None, inputs: torch.Tensor) -> FixedBatch | AutoBatch:
    """The batching policy of a ``batch_size`` setting for inputs like ``inputs``.

    An integer: that size, always (an out-of-memory error is the user's to act on). ``None``:
    the device's default, halved on out-of-memory. ``"auto"``: the timed search, its candidates
    capped on the CPU so that a batch of inputs stays within :data:`AUTO_MAX_CPU_BYTES`.

    Example:
        >>> policy(None, torch.zeros(1, 3)).size, policy(64, torch.zeros(1, 3)).halve
        (128, False)
    """
    device_type = inputs.device.type
    if isinstance(batch_size, int):
        return FixedBatch(batch_size)
    if batch_size is None:
        return FixedBatch(default_batch_size(device_type), halve=True)
    largest = None
    if device_type == "cpu":
        per_row = max(1, math.prod(inputs.shape[1:])) * inputs.element_size()
        largest = max(1, AUTO_MAX_CPU_BYTES // per_row)
    return AutoBatch.for_device(device_type, largest)
