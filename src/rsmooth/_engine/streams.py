"""Noise streams: every seed rsmooth derives, and the noise of sample ``s`` of an input's stream.

An input's noise is a function of three things only: the input's 63-bit **seed**, a **stream**
(one per procedure and purpose, so that no two public calls with the same seed share noise) and
the **sample index** ``s``. Samples are drawn in fixed-size **blocks** (the block size depends
only on the input's number of elements and the device type): sample ``s`` is row ``s % BLOCK`` of
block ``s // BLOCK``, one ``normal_`` draw of shape ``[BLOCK, *input_shape]`` from a generator
seeded by :func:`block_seed`. So the noise never depends on the batch size, on how a range of
samples is split, or on which other inputs share a forward batch.

Seeds come from three places, all here: :func:`input_seeds` draws one per input from the
caller's generator(s); :func:`run_seed` derives one per dataset index from a run's seed (the
dataset runner and the training tables); :func:`block_seed` derives one per noise block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import IntEnum

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MASK64",
    "BlockSeeding",
    "NoiseSource",
    "Stream",
    "auxiliary_uniform",
    "block_seed",
    "block_size",
    "input_seeds",
    "mix",
    "run_seed",
    "splitmix64",
]

MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
_SEED_HIGH = 2**63 - 1
#: On the CPU a block seed encodes (stream, block) in 32 bits: the stream in the top 4.
_STREAM_BITS, _BLOCK_BITS = 4, 28
#: A noise block holds about this many elements: clamp(elements // numel, 1, max_block), per
#: device type. On the CPU drawing noise costs about as much as a small model's forward pass, so
#: blocks stay small (little noise drawn past the end of a range); on an accelerator each block
#: costs a few kernel launches from Python and the noise itself is nearly free.
_BLOCK_ELEMENTS = {"cpu": 2**16}
_MAX_BLOCK = {"cpu": 512}
_BLOCK_ELEMENTS_ACCELERATOR = 2**20
_MAX_BLOCK_ACCELERATOR = 4096

#: ``(input seed, stream, block, device type) -> seed`` of a noise block (:func:`block_seed`).
BlockSeeding = Callable[[int, int, int, str], int]


class Stream(IntEnum):
    """The independent noise streams of an input, one per procedure and purpose.

    CERTIFY's candidate selection, its estimation and the uniform draw of its randomized bound
    keep the numbers of rsmooth 0.2. Every other public procedure draws from a stream of its own,
    so that, for the same seed, its samples are independent of every other call's (candidates
    taken from :meth:`~rsmooth.SmoothedClassifier.sample_counts` never reuse the noise that
    :meth:`~rsmooth.SmoothedClassifier.certify_radius` estimates with).
    """

    SELECTION = 0
    ESTIMATION = 1
    AUXILIARY = 2
    PREDICT = 3
    COUNTS = 4
    GRID_SELECTION = 5
    GRID_ESTIMATION = 6
    SOFT = 7


def splitmix64(value: int) -> int:
    """One SplitMix64 step (Steele, Lea and Flood, 2014): a bijective mix of 64-bit integers."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def mix(*values: int) -> int:
    """Mix integers into one seed in ``[0, 2**63)``; the order of ``values`` matters.

    The same in every process, Python version and platform (no ``hash``).

    Example:
        >>> mix(1, 0, 5) == mix(1, 0, 5), mix(1, 0, 5) == mix(1, 1, 5), 0 <= mix(3) < 2**63
        (True, False, True)
    """
    state = 0
    for value in values:
        state = splitmix64(state ^ (value & MASK64))
    return state >> 1


def _mix32(value: int) -> int:
    """A bijection of 32-bit integers (xor-shifts and odd multiplications)."""
    value = ((value ^ (value >> 16)) * 0x7FEB352D) & _MASK32
    value = ((value ^ (value >> 15)) * 0x846CA68B) & _MASK32
    return value ^ (value >> 16)


def block_seed(seed: int, stream: int, block: int, device_type: str) -> int:
    """The seed of noise block ``block`` of ``stream`` of the input seeded with ``seed``.

    On accelerators, a 63-bit mix of the three numbers. torch's CPU generator keeps only the low
    32 bits of its seed, where mixed seeds of one input's many blocks would collide (about one
    pair per input at 100,000 one-sample blocks); so on the CPU ``(stream, block)`` is encoded in
    32 bits and passed through a bijection keyed by the input's seed, and no two blocks of one
    input ever share a seed.

    Example:
        >>> seeds = {block_seed(7, s, b, "cpu") for s in range(8) for b in range(5000)}
        >>> len(seeds)  # all distinct, and all below 2**32
        40000
        >>> max(seeds) < 2**32
        True
    """
    if device_type != "cpu":
        return mix(seed, stream, block)
    if not 0 <= block < 1 << _BLOCK_BITS or not 0 <= stream < 1 << _STREAM_BITS:
        raise ValueError(
            f"an input can draw at most {1 << _BLOCK_BITS} noise blocks per stream on the CPU, "
            f"got block {block} of stream {stream}"
        )
    key = mix(seed)
    code = (stream << _BLOCK_BITS) | block
    return _mix32(code ^ (key & _MASK32)) ^ ((key >> 32) & _MASK32)


def block_size(numel: int, device_type: str = "cpu") -> int:
    """Samples per noise block for inputs of ``numel`` elements on a device type.

    Example:
        >>> block_size(784), block_size(3 * 32 * 32), block_size(3 * 224 * 224)
        (83, 21, 1)
    """
    elements = _BLOCK_ELEMENTS.get(device_type, _BLOCK_ELEMENTS_ACCELERATOR)
    largest = _MAX_BLOCK.get(device_type, _MAX_BLOCK_ACCELERATOR)
    return max(1, min(largest, elements // max(numel, 1)))


def input_seeds(
    batch: int, generator: torch.Generator | Sequence[torch.Generator] | None
) -> list[int]:
    """One 63-bit seed per input, the root of that input's noise streams.

    ``None`` draws from the global torch RNG, a ``torch.Generator`` gives ``batch`` draws from
    it, and a sequence of ``batch`` generators one draw from each (so input ``j``'s seed depends
    only on ``generator[j]``).

    Example:
        >>> a = input_seeds(3, torch.Generator().manual_seed(0))
        >>> a == input_seeds(3, torch.Generator().manual_seed(0)), len(set(a))
        (True, 3)
    """
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else torch.device("cpu")
        draws = torch.randint(0, _SEED_HIGH, (batch,), generator=generator, device=device)
        return [int(seed) for seed in draws.tolist()]
    return [
        int(torch.randint(0, _SEED_HIGH, (1,), generator=g, device=g.device).item())
        for g in generator
    ]


def run_seed(seed: int, index: int) -> int:
    """The seed of dataset input ``index`` in a run seeded with ``seed`` (both ``>= 0``).

    A generator seeded with it gives the input's root seed (:func:`input_seeds`), so a dataset
    input's noise depends only on the run's seed and its index.

    Example:
        >>> run_seed(0, 0) == run_seed(0, 0), run_seed(0, 0) == run_seed(0, 1)
        (True, False)
    """
    return splitmix64(splitmix64(seed & MASK64) ^ (index & MASK64)) >> 1


def auxiliary_uniform(seeds: Sequence[int], seeding: BlockSeeding | None = None) -> np.ndarray:
    """One uniform variate in ``(0, 1]`` per input seed, from the :attr:`Stream.AUXILIARY` stream.

    Input ``j``'s variate depends only on ``seeds[j]``, never on the other inputs or the device.

    Example:
        >>> u = auxiliary_uniform([1, 2, 1])
        >>> bool(u[0] == u[2]), bool(u[0] != u[1]), bool(((u > 0) & (u <= 1)).all())
        (True, True, True)
    """
    seeding = block_seed if seeding is None else seeding
    values = np.empty(len(seeds), dtype=np.float64)
    generator = torch.Generator()
    for j, seed in enumerate(seeds):
        generator.manual_seed(seeding(seed, Stream.AUXILIARY, 0, "cpu"))
        values[j] = 1.0 - float(torch.rand((), generator=generator, dtype=torch.float64))
    return values


class NoiseSource:
    """Writes noisy copies ``x + delta_s`` of inputs into a forward batch, block by block.

    One per input shape, dtype, device and sigma. It keeps the last block it drew, so that the
    consecutive samples of one input cost one ``normal_`` call per block.

    Args:
        sample_shape: Shape of one input (without the batch dimension).
        dtype: The inputs' floating-point dtype (the noise's too).
        device: The inputs' device (the noise is drawn there).
        sigma: Noise standard deviation.
        seeding: The block seeds. Default: :func:`block_seed`.
    """

    def __init__(
        self,
        sample_shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        sigma: float,
        seeding: BlockSeeding | None = None,
    ) -> None:
        self.sigma = sigma
        self.seeding = block_seed if seeding is None else seeding
        self.device_type = device.type
        self.block = block_size(math.prod(sample_shape), device.type)
        self._noise = torch.empty((self.block, *sample_shape), dtype=dtype, device=device)
        self._generator = torch.Generator(device=device)
        self._held: tuple[int, int, int] | None = None  # (seed, stream, block) in self._noise

    def noise(self, seed: int, stream: int, start: int, stop: int) -> Tensor:
        """The noise of samples ``[start, stop)`` of a stream, as a new tensor."""
        pieces = []
        for index, first, last in self._blocks(start, stop):
            pieces.append(self._draw(seed, stream, index)[first:last].clone())
        return torch.cat(pieces)

    def fill(
        self, out: Tensor, offset: int, clean: Tensor, seed: int, stream: int, start: int, stop: int
    ) -> None:
        """Write ``clean + noise`` of samples ``[start, stop)`` into ``out[offset:]``."""
        for index, first, last in self._blocks(start, stop):
            size = last - first
            torch.add(
                self._draw(seed, stream, index)[first:last],
                clean,
                out=out[offset : offset + size],
            )
            offset += size

    def _blocks(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """``(block, first row, end row)`` of each block that samples ``[start, stop)`` touch."""
        pieces = []
        s = start
        while s < stop:
            index = s // self.block
            end = min(stop, (index + 1) * self.block)
            base = index * self.block
            pieces.append((index, s - base, end - base))
            s = end
        return pieces

    def _draw(self, seed: int, stream: int, index: int) -> Tensor:
        key = (seed, stream, index)
        if self._held != key:
            self._generator.manual_seed(self.seeding(seed, stream, index, self.device_type))
            self._noise.normal_(0.0, self.sigma, generator=self._generator)
            self._held = key
        return self._noise
