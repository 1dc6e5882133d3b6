"""Hash-free integer mixing for reproducible, independent noise streams.

SplitMix64 (Steele, Lea and Flood, 2014) rounds turn a few small integers (a run's seed, an input
index, a stream number, a block number) into a well-spread 63-bit seed for
``torch.Generator.manual_seed``. The result is the same in every process, Python version and
platform.
"""

from __future__ import annotations

__all__ = ["MASK64", "mix", "splitmix64"]

MASK64 = (1 << 64) - 1


def splitmix64(value: int) -> int:
    """One SplitMix64 step: a bijective, well-mixing map of 64-bit integers."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def mix(*values: int) -> int:
    """Mix integers into one seed in ``[0, 2**63)``; the order of ``values`` matters.

    Example:
        >>> mix(1, 0, 5) == mix(1, 0, 5), mix(1, 0, 5) == mix(1, 1, 5), 0 <= mix(3) < 2**63
        (True, False, True)
    """
    state = 0
    for value in values:
        state = splitmix64(state ^ (value & MASK64))
    return state >> 1
