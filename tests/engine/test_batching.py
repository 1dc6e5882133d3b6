"""The batching policy: a fixed default per device type, and the opt-in timed search."""

import pytest

from rsmooth._engine.batching import AutoBatch, FixedBatch, default_batch_size


def test_the_defaults_are_fixed_per_device_type():
    assert default_batch_size("cpu") == 128 and default_batch_size("cuda") == 2048
    fixed = FixedBatch(128)
    assert [fixed.next_size(r) for r in (1, 10**6)] == [(128, False), (128, False)]
    assert fixed.choice == fixed.target() == 128


def test_only_the_default_halves_on_out_of_memory():
    default = FixedBatch(2048, halve=True)
    assert default.out_of_memory(2048) == 1024 and default.size == 1024
    assert FixedBatch(1000).out_of_memory(1000) is None  # the user's size: re-raise


def search(tuning: AutoBatch, per_row: dict[int, float], slow=None, rows: int = 10**6) -> list[int]:
    """Drive a search with fixed per-row times (``slow(step, size)`` scales one batch)."""
    tuning.begin_call(rows)
    sizes = []
    while tuning.choice is None and len(sizes) < 2000:
        size, timed = tuning.next_size(rows)
        assert timed
        scale = 1.0 if slow is None else slow(len(sizes), size)
        tuning.record(size, per_row[size] * size * scale)
        sizes.append(size)
    return sizes


@pytest.mark.parametrize(
    ("per_row", "chosen"),
    [
        # noise: 64 looks 3% slower than 32, the search goes on and finds 256
        ({32: 1.0, 64: 1.03, 128: 0.8, 256: 0.7, 512: 1.2}, 256),
        # clearly slower twice in a row: it settles at the best so far
        ({32: 1.0, 64: 0.7, 128: 1.0, 256: 0.1}, 64),
        # two candidates in a row within the noise: it settles at the best
        ({32: 1.0, 64: 0.9, 128: 0.92, 256: 0.95, 512: 0.1}, 64),
    ],
)
def test_the_search_finds_the_fastest_size_past_timing_noise(per_row, chosen):
    tuning = AutoBatch.for_device("cpu")
    search(tuning, per_row)
    assert tuning.choice == chosen


def test_a_slow_spell_on_one_candidate_does_not_decide():
    # 64 is faster than 32, but the machine is 3x slower while 64 is first timed: the paired
    # comparison (alternating batches) and the second timing keep 64
    tuning = AutoBatch.for_device("cpu", largest=64)
    search(tuning, {32: 1.0, 64: 0.8}, slow=lambda step, size: 3.0 if 17 <= step < 30 else 1.0)
    assert tuning.choice == 64


def test_the_search_stops_at_the_last_candidate():
    tuning = AutoBatch.for_device("cpu", largest=100)
    assert tuning.candidates == (32, 64)
    search(tuning, {32: 1.0, 64: 0.5})
    assert tuning.choice == 64 and tuning.default == 64


def test_the_search_keeps_its_extra_time_within_the_budget():
    # the per-row cost peaks at 128; the search's batches at other sizes cost at most 2% of the
    # time of all the rows it served (plus one estimate's slack)
    per_row = {32: 1.5, 64: 1.2, 128: 1.0, 256: 1.4, 512: 2.0, 1024: 3.0, 2048: 3.0}
    per_row |= {4096: 3.0, 8192: 3.0}
    tuning = AutoBatch.for_device("cpu")
    served = 0
    while tuning.choice is None and served < 10**8:
        rows = 40_000
        tuning.begin_call(rows)
        served += rows
        left = rows
        while left > 0 and tuning.choice is None:
            size, timed = tuning.next_size(left)
            if timed:
                tuning.record(size, per_row[size] * size)
            left -= size
    assert tuning.choice == 128
    assert tuning.overhead() <= 0.021 * served * per_row[128]


def test_out_of_memory_during_the_search_settles_below_it():
    tuning = AutoBatch.for_device("cuda")
    assert tuning.out_of_memory(512) == 256 and tuning.choice == 256
