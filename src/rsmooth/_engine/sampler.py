"""The sampler: a stream of inputs in, each input's procedure result out, forward batches kept full.

Every procedure of rsmooth (CERTIFY, PREDICT, the counts, the sequential radius grid) is written
as a **job** per input: a Python generator that yields the draws it needs (:class:`Draw`: samples
``[start, stop)`` of one noise stream), receives their vote counts (:class:`Votes`), and finally
returns the input's result. The sampler runs many jobs at once:

- It admits inputs from the stream while the samples waiting to be drawn are fewer than the next
  group of forward batches needs, so that every forward batch is full, whatever stage each input
  is at, until the stream runs dry.
- It fills forward batches first-in first-out across the inputs' draws, adds the noise of each
  sample from the input's own stream (:class:`~rsmooth._engine.streams.NoiseSource`), and counts
  the votes on the device.
- After each group of forward batches it copies the counts of the draws that finished to the host
  at once (one synchronisation), hands them to their jobs, and reports the results of the inputs
  that are done, in the order they finish.

An input's result depends only on its seed, its procedure and the model, never on the batch size,
the group size or the other inputs of the stream.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from rsmooth._engine.batching import AutoBatch, FixedBatch
from rsmooth._engine.forward import OUT_OF_MEMORY, ForwardRunner
from rsmooth._engine.streams import BlockSeeding, NoiseSource, Stream
from rsmooth._model_state import preserve_model_state

__all__ = [
    "Draw",
    "Item",
    "Job",
    "NonFiniteError",
    "Procedure",
    "Sampler",
    "Votes",
]

R = TypeVar("R")
_HALF = (torch.float16, torch.bfloat16)
R_co = TypeVar("R_co", covariant=True)
Batching = FixedBatch | AutoBatch


@dataclass(frozen=True, slots=True)
class Draw:
    """A job's request: the votes of samples ``[start, stop)`` of noise stream ``stream``."""

    stream: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Votes:
    """The answer to a :class:`Draw`: votes per class, and the samples that gave no vote.

    Attributes:
        counts: ``int64`` ``[K]``, the samples whose logits were finite, by their argmax class.
        nonfinite: The samples whose logits were not all finite (they vote for no class).
    """

    counts: np.ndarray
    nonfinite: int


@dataclass(frozen=True, slots=True)
class Item:
    """One input of a stream: a key to report its result under, the clean input, its seed.

    Attributes:
        key: Anything hashable (a position in a batch, a dataset index).
        inputs: The clean input, without a batch dimension, on the sampler's device.
        seed: The root of the input's noise streams.
        extra: What the procedure needs besides (e.g. a given candidate class).
    """

    key: Hashable
    inputs: Tensor
    seed: int
    extra: Any = None


#: A job: yields tuples of draws, receives a tuple of votes (one per draw), returns the result.
Job = Generator[tuple[Draw, ...], tuple[Votes, ...], R]


class Procedure(Protocol[R_co]):
    """What the sampler runs: a job per input.

    A procedure may also define ``finalize(values: list) -> list``: the sampler then passes it
    the values the jobs returned for all the inputs that finished at one synchronisation, and
    reports what it returns, so that the statistics of many inputs are computed together.
    """

    def job(self, item: Item) -> Generator[tuple[Draw, ...], tuple[Votes, ...], Any]:
        """The generator that decides what ``item`` needs (its value goes to ``finalize``)."""
        ...


class NonFiniteError(ValueError):
    """The model returned non-finite logits for some noisy samples (``nonfinite="raise"``)."""


@dataclass(slots=True)
class _Slot(Generic[R]):
    """An input in flight."""

    item: Item
    job: Job[R]
    rows: list[int] = field(default_factory=list)  # count rows of the current draws
    unfed: int = 0  # current draws with samples not yet in a forward batch


@dataclass(slots=True)
class _Segment:
    """The part of a draw still to be fed: samples ``[next, stop)`` into count row ``row``."""

    slot: _Slot[Any]
    stream: int
    next: int
    stop: int
    row: int


class Sampler:
    """Runs procedures over streams of inputs on one device (see the module docstring).

    Args:
        forward: The forward runner (the model, layout, compile, autocast, output checks).
        batching: The batch-size policy for these inputs (one per input shape, dtype and
            device).
        sigma: Noise standard deviation.
        nonfinite: ``"raise"`` (a :class:`NonFiniteError` naming the inputs) or
            ``"count_against"`` (such samples vote for no class).
        group: Forward batches between two synchronisations with the host. Default: 1 on the
            CPU (synchronising costs nothing there), 4 elsewhere.
        seeding: The noise blocks' seeds. Default: the library's.
    """

    def __init__(
        self,
        forward: ForwardRunner,
        batching: Batching,
        sigma: float,
        *,
        nonfinite: str = "raise",
        group: int | None = None,
        seeding: BlockSeeding | None = None,
    ) -> None:
        self.forward = forward
        self.batching = batching
        self.sigma = sigma
        self.nonfinite = nonfinite
        self.group = group
        self.seeding = seeding

    def soft_probabilities(
        self, inputs: Tensor, seeds: Sequence[int], num_noise: int, *, compiled: bool
    ) -> Tensor:
        r"""The soft smoothed classifier :math:`\frac1m\sum_i \mathrm{softmax}(f(x+\delta_i))`.

        Differentiable in ``inputs`` and the model's parameters: the ``num_noise * B`` noisy
        copies (copy ``i`` of input ``j`` is sample ``i`` of its :attr:`Stream.SOFT` stream) run
        through the forward runner in batches of the batch size (padded when ``compiled``), in
        eval mode, without inference mode.
        """
        noise_source = NoiseSource(
            tuple(inputs.shape[1:]), inputs.dtype, inputs.device, self.sigma, self.seeding
        )
        with torch.no_grad():
            per_input = [noise_source.noise(seed, Stream.SOFT, 0, num_noise) for seed in seeds]
        noise = torch.stack(per_input, dim=1).reshape(num_noise * len(seeds), *inputs.shape[1:])
        self.forward.check_device(inputs.device)
        layout = self.forward.layout(inputs.detach())
        noisy = inputs.repeat((num_noise,) + (1,) * (inputs.dim() - 1)) + noise
        if layout is not None:
            noisy = noisy.contiguous(memory_format=layout)
        size = self.batching.target()
        pieces = []
        with preserve_model_state(self.forward.model, train=False):
            for piece in noisy.split(size):
                rows = piece.shape[0]
                if compiled and rows < size:
                    piece = torch.cat([piece, piece.new_zeros((size - rows, *piece.shape[1:]))])
                logits = self.forward.logits(piece, inputs, compiled=compiled)[:rows]
                pieces.append(logits.float() if logits.dtype in _HALF else logits)
        probs = torch.cat(pieces).softmax(dim=1)
        return probs.reshape(num_noise, len(seeds), -1).mean(dim=0)

    def run(
        self,
        procedure: Procedure[R],
        items: Iterable[Item],
        on_result: Callable[[Hashable, R], None],
        *,
        probe: Tensor,
        on_progress: Callable[[int, int], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Run ``procedure`` on every item; ``on_result(key, result)`` as each item finishes.

        The model runs in eval mode under :func:`torch.inference_mode` (its modes are restored
        at the end, also after an error).

        Args:
            procedure: Gives each item's job.
            items: The inputs, all of ``probe``'s shape, dtype and device; consumed lazily.
            on_result: Called with each item's key and result, in the order the items finish.
            probe: A batch of clean inputs ``[P, *]`` like the items: it fixes the shape, and
                its first rows decide the layout (``memory_format="auto"``).
            on_progress: Called after each synchronisation with ``(inputs finished, samples
                drawn)`` since the previous call.
            stop: Checked after each synchronisation; when it returns True, no more items are
                admitted and the run ends (the inputs in flight are dropped, unreported).
        """
        with preserve_model_state(self.forward.model, train=False), torch.inference_mode():
            _Run(self, procedure, probe, on_result, on_progress, stop).run(iter(items))


class _Run(Generic[R]):
    """The state of one :meth:`Sampler.run`."""

    def __init__(
        self,
        sampler: Sampler,
        procedure: Procedure[R],
        probe: Tensor,
        on_result: Callable[[Hashable, R], None],
        on_progress: Callable[[int, int], None] | None,
        stop: Callable[[], bool] | None,
    ) -> None:
        self.sampler = sampler
        self.on_result = on_result
        self.procedure = procedure
        self.device = probe.device
        self.probe = probe
        self.on_progress = on_progress
        self.stop = stop
        self.sample_shape = tuple(probe.shape[1:])
        self.noise = NoiseSource(
            self.sample_shape, probe.dtype, probe.device, sampler.sigma, sampler.seeding
        )
        sampler.forward.check_device(probe.device)
        self.layout = sampler.forward.layout(probe)
        self.group = sampler.group or (1 if probe.device.type == "cpu" else 4)
        self.pending: deque[_Segment] = deque()
        self.backlog = 0  # samples in `pending` not yet fed
        self.ready: list[_Slot[R]] = []  # slots whose draws are all fed
        self.returned: list[tuple[Hashable, Any]] = []  # finished jobs' values, not yet reported
        self.finalize = getattr(procedure, "finalize", None)
        self.free_rows: list[int] = []
        self.next_row = 0
        self.classes = 0
        self.counts: Tensor | None = None  # [capacity, classes] on the device
        self.bad: Tensor | None = None  # [capacity] non-finite samples per row
        self.buffer = torch.empty((0, *self.sample_shape), dtype=probe.dtype, device=self.device)
        self.limit = math.inf  # most rows per forward pass after an out-of-memory error
        self.drawn = self.done = 0

    # ------------------------------------------------------------------ the loop
    def run(self, items: Iterator[Item]) -> None:
        exhausted = False
        batching = self.sampler.batching
        while True:
            while not exhausted and self.backlog < self.group * batching.target():
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                self._admit(item)
            self._report()
            if not self.pending and not self.ready:
                return
            for _ in range(self.group):
                if not self.pending:
                    break
                self._forward_batch()
            self._synchronise()
            if self.stop is not None and self.stop():
                return

    def _admit(self, item: Item) -> None:
        if item.inputs.shape != self.sample_shape or item.inputs.device != self.device:
            raise ValueError(
                f"every input of a stream must have shape {self.sample_shape} on {self.device}, "
                f"got {tuple(item.inputs.shape)} on {item.inputs.device}"
            )
        slot: _Slot[R] = _Slot(item, self.procedure.job(item))
        self._advance(slot, None)

    def _advance(self, slot: _Slot[R], votes: tuple[Votes, ...] | None) -> None:
        """Send ``votes`` to the slot's job; queue its next draws, or record its result."""
        try:
            draws = next(slot.job) if votes is None else slot.job.send(votes)
        except StopIteration as done:
            self.returned.append((slot.item.key, done.value))
            return
        slot.rows = [self._row() for _ in draws]
        slot.unfed = 0
        for draw, row in zip(draws, slot.rows, strict=True):
            if draw.stop > draw.start:
                self.pending.append(_Segment(slot, draw.stream, draw.start, draw.stop, row))
                self.backlog += draw.stop - draw.start
                slot.unfed += 1
        self.sampler.batching.begin_call(sum(d.stop - d.start for d in draws))
        if slot.unfed == 0:
            self.ready.append(slot)

    def _row(self) -> int:
        if self.free_rows:
            return self.free_rows.pop()
        self.next_row += 1
        return self.next_row - 1

    # ------------------------------------------------------------------ forward batches
    def _forward_batch(self) -> None:
        batching = self.sampler.batching
        size, timed = batching.next_size(self.backlog)
        compiled = self.sampler.forward.compiled is not None and batching.choice == size
        rows = size if compiled else min(size, self.backlog)
        if self.buffer.shape[0] < rows:
            layout = torch.contiguous_format if self.layout is None else self.layout
            self.buffer = torch.empty(
                (rows, *self.sample_shape), dtype=self.buffer.dtype, device=self.device,
                memory_format=layout,
            )  # fmt: skip
        owners: list[int] = []
        lengths: list[int] = []
        filled = 0
        while filled < rows and self.pending:
            segment = self.pending[0]
            take = min(segment.stop - segment.next, rows - filled)
            slot = segment.slot
            self.noise.fill(
                self.buffer, filled, slot.item.inputs, slot.item.seed, segment.stream,
                segment.next, segment.next + take,
            )  # fmt: skip
            owners.append(segment.row)
            lengths.append(take)
            filled += take
            segment.next += take
            if segment.next == segment.stop:
                self.pending.popleft()
                slot.unfed -= 1
                if slot.unfed == 0:
                    self.ready.append(slot)
        self.backlog -= filled
        if compiled and filled < rows:
            self.buffer[filled:rows].zero_()  # padding: compiled once, outputs discarded
            logits = self._logits(rows, compiled=True)[:filled]
        elif timed:
            _synchronize(self.device)
            began = batching.clock()
            logits = self._logits(filled, compiled=compiled)
            _synchronize(self.device)
            batching.record(filled, batching.clock() - began)
        else:
            logits = self._logits(filled, compiled=compiled)
        self._count(logits, owners, lengths)
        self.drawn += filled

    def _logits(self, rows: int, *, compiled: bool) -> Tensor:
        """Logits of ``buffer[:rows]``; an out-of-memory error splits the batch (when allowed)."""
        forward = self.sampler.forward
        while True:
            try:
                if rows <= self.limit:
                    return forward.logits(self.buffer[:rows], self.probe, compiled=compiled)
                pieces = self.buffer[:rows].split(int(self.limit))
                return torch.cat([forward.logits(p, self.probe, compiled=compiled) for p in pieces])
            except OUT_OF_MEMORY:
                smaller = self.sampler.batching.out_of_memory(int(min(rows, self.limit)))
                if smaller is None:
                    raise
                self.limit = smaller
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _count(self, logits: Tensor, owners: list[int], lengths: list[int]) -> None:
        classes = int(logits.shape[1])
        if self.counts is None:
            self.classes = classes
        elif classes != self.classes:
            raise ValueError(
                f"the model returned {classes} logits for some samples and {self.classes} for "
                "others"
            )
        counts, bad = self._tables()
        finite = torch.isfinite(logits).all(dim=1)
        votes = logits.argmax(dim=1)
        if len(owners) == 1:  # the whole batch is one draw's (large n): no owner index
            row = owners[0]
            counts[row * classes : (row + 1) * classes].index_add_(0, votes, finite.long())
            bad[row : row + 1] += (~finite).sum()
            return
        owner = torch.repeat_interleave(torch.tensor(owners), torch.tensor(lengths))
        owner = _to_device(owner, self.device)
        counts.index_add_(0, owner * classes + votes, finite.long())
        bad.index_add_(0, owner, (~finite).long())

    def _tables(self) -> tuple[Tensor, Tensor]:
        """The vote counts (flat, ``rows * classes``) and non-finite counts, grown to fit."""
        if self.counts is None or self.bad is None or self.next_row > self.bad.shape[0]:
            capacity = max(64, 2 * self.next_row)
            counts = torch.zeros(capacity * self.classes, dtype=torch.long, device=self.device)
            bad = torch.zeros(capacity, dtype=torch.long, device=self.device)
            if self.counts is not None and self.bad is not None:
                counts[: self.counts.shape[0]] = self.counts
                bad[: self.bad.shape[0]] = self.bad
            self.counts, self.bad = counts, bad
        return self.counts, self.bad

    # ------------------------------------------------------------------ decisions
    def _synchronise(self) -> None:
        """Hand the finished draws' votes to their jobs (one copy to the host for all of them)."""
        ready, self.ready = self.ready, []
        if ready:
            rows = [row for slot in ready for row in slot.rows]
            if self.counts is None:  # only empty draws so far: no forward pass has run
                votes = np.zeros((len(rows), max(self.classes, 1)), dtype=np.int64)
                bad = np.zeros(len(rows), dtype=np.int64)
            else:
                flat, nonfinite = self._tables()
                index = _to_device(torch.tensor(rows), self.device)
                table = flat.view(-1, self.classes)
                host = torch.cat([table.index_select(0, index), nonfinite[index, None]], 1).cpu()
                votes, bad = host[:, :-1].numpy(), host[:, -1].numpy()
                table.index_fill_(0, index, 0)
                nonfinite.index_fill_(0, index, 0)
            self._check_nonfinite(ready, bad)
            position = 0
            for slot in ready:
                answers = []
                for _ in slot.rows:
                    answers.append(Votes(votes[position].copy(), int(bad[position])))
                    position += 1
                self.free_rows.extend(slot.rows)
                self._advance(slot, tuple(answers))
        self._report()
        if self.on_progress is not None:
            self.on_progress(self.done, self.drawn)
            self.done = self.drawn = 0

    def _report(self) -> None:
        """Report the inputs that finished (finalized together when the procedure can)."""
        if not self.returned:
            return
        returned, self.returned = self.returned, []
        values = [value for _, value in returned]
        if self.finalize is not None:
            values = self.finalize(values)
        for (key, _), value in zip(returned, values, strict=True):
            self.done += 1
            self.on_result(key, value)

    def _check_nonfinite(self, ready: list[_Slot[R]], bad: np.ndarray) -> None:
        if self.sampler.nonfinite != "raise" or not bad.any():
            return
        per_slot = []
        position = 0
        for slot in ready:
            amount = int(bad[position : position + len(slot.rows)].sum())
            position += len(slot.rows)
            if amount:
                per_slot.append(f"input {slot.item.key}: {amount}")
        listed = ", ".join(per_slot[:10]) + (
            f", and {len(per_slot) - 10} more inputs" if len(per_slot) > 10 else ""
        )
        raise NonFiniteError(
            f"the model returned non-finite logits (NaN or inf) for some noisy samples "
            f"({listed}); a non-finite logit row is not a vote. Fix the model, or pass "
            "nonfinite='count_against' to SmoothedClassifier to count such samples against "
            "every class (the certificate stays sound, with fewer votes)"
        )


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and backend is not None and hasattr(backend, "synchronize"):
        backend.synchronize(device)


def _to_device(values: Tensor, device: torch.device) -> Tensor:
    """Copy a small host tensor to ``device`` without blocking the host (pinned on CUDA)."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)
