"""The sampling engine: batch-size-free noise streams, non-finite logits, forward-pass hints."""

import copy
import itertools
import json
import math
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import Spy, load_script, small_cnn
from torch import nn

import rsmooth._autobatch as autobatch
import rsmooth.smoothing as smoothing
from rsmooth import ABSTAIN, SmoothedClassifier
from rsmooth._autobatch import AutoBatch, timed_batches
from rsmooth.smoothing import (
    AUXILIARY,
    ESTIMATION,
    SELECTION,
    _auto_key,
    _auxiliary_uniform,
    _block_size,
)


def cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)  # test-only: fixed random weights, so counts spread over classes
    return small_cnn(num_classes).eval()


def flat_model(numel: int, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)  # test-only: fixed random weights
    return nn.Sequential(nn.Flatten(), nn.Linear(numel, num_classes)).eval()


def gens(seeds, device="cpu"):
    return [torch.Generator(device).manual_seed(s) for s in seeds]


# ---------------------------------------------------------------- noise determinism
def test_block_size_depends_only_on_the_number_of_elements():
    assert _block_size(2) == 512
    assert _block_size(64) == 512
    assert _block_size(784) == 2**16 // 784
    assert _block_size(3 * 224 * 224) == 1
    # accelerators: larger blocks (fewer launches per forward batch), still batch-size free
    assert _block_size(784, "cuda") == 2**20 // 784
    assert _block_size(2, "cuda") == 4096
    assert _block_size(3 * 224 * 224, "cuda") == 2**20 // (3 * 224 * 224)
    assert len({SELECTION, ESTIMATION, AUXILIARY}) == 3


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_results_do_not_depend_on_the_batch_size(batch_size):
    x = torch.rand(2, 1, 8, 8)
    reference = SmoothedClassifier(cnn(), 0.5, batch_size=4096)
    smoothed = SmoothedClassifier(cnn(), 0.5, batch_size=batch_size)
    expected = reference.sample_counts(x, num=60, generator=torch.Generator().manual_seed(3))
    counts = smoothed.sample_counts(x, num=60, generator=torch.Generator().manual_seed(3))
    assert torch.equal(counts, expected)
    assert len(expected.unique()) > 3  # a model whose votes spread, so noise changes show
    a = reference.certify(x, n=50, n0=10, generator=gens([1, 2]))
    b = smoothed.certify(x, n=50, n0=10, generator=gens([1, 2]))
    assert torch.equal(a.count, b.count) and torch.equal(a.prediction, b.prediction)
    assert torch.equal(a.radius, b.radius)


def test_the_noisy_samples_themselves_do_not_depend_on_the_batch_size():
    x = torch.rand(2, 3, 4, 4)  # 48 elements: blocks of 512 samples
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    seen = {}
    for batch_size in (5, 333, 2000):
        spy = Spy(model)
        SmoothedClassifier(spy, 0.5, batch_size=batch_size).sample_counts(
            x, num=700, generator=gens([4, 5])
        )
        seen[batch_size] = torch.cat(spy.seen)
        assert max(b.shape[0] for b in spy.seen) <= batch_size
    assert torch.equal(seen[5], seen[333]) and torch.equal(seen[5], seen[2000])


def split_counts(smoothed, x, seeds, stream, cuts):
    return sum(
        smoothed._counts(x, seeds, stream=stream, start=a, stop=b)
        for a, b in itertools.pairwise(cuts)
    )


@pytest.mark.parametrize("batch_size", [13, 1000])
def test_counts_over_split_ranges_add_up(batch_size):
    x = torch.rand(2, 1, 16, 16)  # 256 elements: blocks of 256 samples, so cuts fall inside
    smoothed = SmoothedClassifier(flat_model(256), 2.0, batch_size=batch_size)
    seeds = [11, 12]
    whole = smoothed._counts(x, seeds, stream=ESTIMATION, start=0, stop=700)
    assert torch.equal(split_counts(smoothed, x, seeds, ESTIMATION, [0, 300, 700]), whole)
    assert torch.equal(split_counts(smoothed, x, seeds, ESTIMATION, [0, 1, 256, 513, 700]), whole)
    assert int(whole.sum()) == 1400


def test_an_input_gets_the_same_counts_alone_and_in_a_batch():
    x = torch.rand(4, 1, 8, 8)
    smoothed = SmoothedClassifier(cnn(), 0.5, batch_size=50)
    together = smoothed._counts(x, [5, 6, 7, 8], stream=ESTIMATION, start=0, stop=300)
    for j, seed in enumerate([5, 6, 7, 8]):
        alone = smoothed._counts(x[j : j + 1], [seed], stream=ESTIMATION, start=0, stop=300)
        assert torch.equal(alone[0], together[j])
    # the same holds through the public per-input generators
    cert = smoothed.certify(x, n=300, n0=20, generator=gens([1, 2, 3, 4]))
    single = smoothed.certify(x[2:3], n=300, n0=20, generator=gens([3]))
    assert cert.count[2] == single.count[0]


def test_selection_and_estimation_streams_are_independent():
    x = torch.zeros(1, 4)
    spy = Spy(nn.Linear(4, 2))
    smoothed = SmoothedClassifier(spy, 1.0, batch_size=4000)
    smoothed._counts(x, [9], stream=SELECTION, start=0, stop=2000)
    smoothed._counts(x, [9], stream=ESTIMATION, start=0, stop=2000)
    smoothed._counts(x, [9], stream=SELECTION, start=0, stop=2000)
    selection, estimation, again = (s.flatten() for s in spy.seen)
    assert torch.equal(selection, again)
    assert not torch.isclose(selection, estimation).any()
    correlation = np.corrcoef(selection.numpy(), estimation.numpy())[0, 1]
    assert abs(correlation) < 4 / math.sqrt(selection.numel())  # 4 standard errors


def test_each_noise_block_is_generated_once(monkeypatch):
    calls = []
    real = smoothing.mix
    monkeypatch.setattr(smoothing, "mix", lambda *v: calls.append(v) or real(*v))
    x = torch.rand(2, 1, 16, 16)  # blocks of 256 samples; 700 samples touch 3 blocks
    SmoothedClassifier(flat_model(256), 0.5, batch_size=7)._counts(
        x, [1, 2], stream=ESTIMATION, start=0, stop=700
    )
    assert sorted(calls) == [(s, ESTIMATION, b) for s in (1, 2) for b in range(3)]


def test_input_seeds_forms():
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5)
    x = torch.zeros(3, 2)
    one = smoothed._input_seeds(x, torch.Generator().manual_seed(0))
    assert one == smoothed._input_seeds(x, torch.Generator().manual_seed(0))
    assert len(set(one)) == 3 and all(0 <= s < 2**63 for s in one)
    per_input = smoothed._input_seeds(x, gens([1, 2, 1]))
    assert per_input[0] == per_input[2] != per_input[1]
    assert per_input[1] == smoothed._input_seeds(x[:1], gens([2]))[0]
    torch.manual_seed(5)  # test-only: the global RNG is the documented default
    first = smoothed._input_seeds(x, None)
    torch.manual_seed(5)
    assert smoothed._input_seeds(x, None) == first


def test_auxiliary_uniform_is_per_seed_and_in_the_half_open_unit_interval():
    u = _auxiliary_uniform(list(range(2000)))
    assert u.dtype == np.float64 and u.shape == (2000,)
    assert bool(((u > 0) & (u <= 1)).all())
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / 2000)
    assert np.array_equal(_auxiliary_uniform([7, 3]), u[[7, 3]])


# ---------------------------------------------------------------- non-finite logits
class NaNFor(nn.Module):
    """Class 0 everywhere, NaN logits for inputs whose first coordinate is > 0.5 and for
    every `every`-th row of the others."""

    def __init__(self, every: int = 0) -> None:
        super().__init__()
        self.every, self.rows = every, 0

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3)
        out[:, 0] = 1.0
        bad = x[:, 0] > 0.5
        if self.every:
            bad |= torch.arange(self.rows, self.rows + x.shape[0]) % self.every == 0
        self.rows += x.shape[0]
        out[bad] = torch.tensor([math.nan, 0.0, math.inf])
        return out


def test_nonfinite_logits_raise_naming_inputs_and_counts():
    x = torch.tensor([[-100.0, 0.0], [100.0, 0.0], [-100.0, 0.0], [100.0, 0.0]])
    smoothed = SmoothedClassifier(NaNFor(), 0.1, input_range=None)
    with pytest.raises(ValueError, match=r"input 1: 50 of 50, input 3: 50 of 50\)"):
        smoothed.sample_counts(x, num=50)
    with pytest.raises(ValueError, match="nonfinite='count_against'"):
        smoothed.certify(x, n=100, n0=10)
    with pytest.raises(ValueError, match="input 1: 100 of 100"):
        smoothed.predict(x, n=100)


def test_count_against_counts_nonfinite_samples_for_no_class():
    x = torch.tensor([[-100.0, 0.0], [100.0, 0.0]])
    smoothed = SmoothedClassifier(NaNFor(every=4), 0.1, nonfinite="count_against", input_range=None)
    counts = smoothed.sample_counts(x, num=400)
    assert counts[1].sum() == 0
    assert counts[0, 0] == 300 and counts[0, 1:].sum() == 0  # every 4th row was NaN
    cert = smoothed.certify(x, n=1000, n0=100)
    assert cert.nonfinite.tolist() == [275, 1100]
    assert cert.prediction.tolist()[1] == ABSTAIN and float(cert.radius[1]) == 0.0
    # sound: 750 of 1000 votes bound p_A below 0.75, however clean the other votes are
    assert float(cert.p_lower[0]) < 0.75 and int(cert.count[0]) == 750
    assert "count_against" in repr(smoothed)


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite must be one of 'raise', 'count_against'"):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, nonfinite="ignore")
    with pytest.raises(TypeError, match="nonfinite must be one of .*, got NoneType"):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, nonfinite=None)


# ---------------------------------------------------------------- model-output hints
class Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.linear, self.kind = nn.Linear(2, 3), kind

    def forward(self, x):
        logits = self.linear(x)
        if self.kind == "tuple":
            return logits, x
        if self.kind == "dict":
            return {"logits": logits}

        class Output:
            pass

        output = Output()
        output.logits = logits
        return output


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("tuple", r"got a tuple.*model\(x\)\[0\]"),
        ("dict", r"got a dict.*model\(x\)\[\"logits\"\]"),
        ("object", r"got a Output.*model\(x\)\.logits"),
    ],
)
def test_a_model_returning_a_container_gets_a_hint(kind, match):
    with pytest.raises(TypeError, match=match):
        SmoothedClassifier(Returns(kind), 0.5).certify(torch.zeros(2, 2), n=20)


def test_one_unbatched_image_gets_the_unsqueeze_hint():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"inputs\.unsqueeze\(0\)") as info:
        SmoothedClassifier(model, 0.5).predict(torch.zeros(1, 8, 8), n=20)
    assert "channels" in str(info.value)  # the model's own message is kept
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        SmoothedClassifier(nn.Identity(), 0.5).certify(torch.zeros(3, 4, 4), n=20)


@pytest.mark.slow
def test_an_export_with_a_fixed_batch_size_gets_the_dynamic_batch_hint():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    exported = torch.export.export(model, (torch.rand(2, 1, 2, 2),)).module()
    with pytest.raises(ValueError, match=r"dynamic batch dimension.*Dim\('batch'\)"):
        SmoothedClassifier(exported, 0.5, batch_size=64).certify(torch.rand(3, 1, 2, 2), n=100)


# ---------------------------------------------------------------- keyword-only sampling arguments
@pytest.mark.parametrize(
    "call",
    [
        lambda s, x: s.certify(x, 100, 2000, 0.001),  # Cohen's positional order (x, n0, n, alpha)
        lambda s, x: s.certify(x, 100),
        lambda s, x: s.predict(x, 100, 0.001),
        lambda s, x: s.sample_counts(x, 50),
        lambda s, x: s.soft_predict(x, 8),
        lambda s, x: s.max_radius(1000, 0.001),
    ],
)
def test_sampling_arguments_are_keyword_only(call):
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5)
    with pytest.raises(TypeError, match="positional argument"):
        call(smoothed, torch.zeros(1, 2))


# ---------------------------------------------------------------- progress
def test_progress_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5, batch_size=64)
    cert = smoothed.certify(torch.zeros(3, 2), n=100, n0=10, progress=True)
    err = capsys.readouterr().err
    assert "certify" in err and "330" in err  # 3 inputs x (10 + 100) samples
    assert cert.prediction.shape == (3,)
    smoothed.predict(torch.zeros(2, 2), n=50, progress=True)
    assert "predict" in capsys.readouterr().err


def test_progress_without_tqdm_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if not installed
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5, batch_size=64)
    smoothed.certify(torch.zeros(3, 2), n=100, n0=10, progress=True)
    assert "certify: 330/330 samples" in capsys.readouterr().err
    smoothed.certify(torch.zeros(3, 2), n=100, n0=10)
    assert capsys.readouterr().err == ""  # off by default


def test_progress_must_be_a_bool():
    with pytest.raises(TypeError, match="progress must be a bool, got str"):
        SmoothedClassifier(nn.Linear(2, 2), 0.5).certify(torch.zeros(1, 2), n=20, progress="yes")


# ---------------------------------------------------------------- batch_size="auto"
class RowCounter(nn.Module):
    """A linear model that records the rows of every forward pass. Optionally it runs out of
    memory on batches larger than `memory`, or advances `clock` by `cost(rows)` seconds per
    forward pass."""

    def __init__(self, numel: int, memory: int | None = None, cost=None, clock=None) -> None:
        super().__init__()
        self.linear = nn.Linear(numel, 3)
        self.memory, self.cost, self.clock = memory, cost, clock
        self.sizes, self.refused = [], []

    def forward(self, x):
        if self.memory is not None and x.shape[0] > self.memory:
            self.refused.append(x.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.sizes.append(x.shape[0])
        if self.cost is not None:
            self.clock.now += self.cost(x.shape[0])
        return self.linear(x.flatten(1))


class FakeClock:
    """The engine's clock for the batch-size search, advanced only by the model: the timings,
    and so the search's decisions, do not depend on the machine or its load."""

    def __init__(self, monkeypatch) -> None:
        self.now = 0.0
        monkeypatch.setattr(smoothing, "_clock", lambda: self.now)


def peaked(peak: int):
    """Forward seconds for `rows`: a fixed cost per call plus a cost per row, doubled above
    `peak` (as when a batch no longer fits a cache), so the fastest batch size is `peak`."""
    return lambda rows: (0.001 + 1e-5 * rows) * (2.0 if rows > peak else 1.0)


def search_cost(tuning: AutoBatch, cost, best: int) -> float:
    """The extra model time of a search's batches, in rows of the `best` size's time."""
    fastest = cost(best) / best
    return sum(rows * (cost(size) / size - fastest) for size, rows in tuning.rows.items()) / fastest


def test_auto_tunes_on_the_real_batches_within_its_budget_and_caches(monkeypatch):
    cost = peaked(128)
    model = RowCounter(16, cost=cost, clock=FakeClock(monkeypatch))
    smoothed = SmoothedClassifier(model, 0.5, memory_format="preserve")  # no layout check rows
    assert smoothed.batch_size == "auto" and "batch_size='auto'" in repr(smoothed)
    x = torch.rand(4, 1, 4, 4)
    total = 4 * 10_000
    calls = []
    while not smoothed._chosen_batch_sizes() and len(calls) < 5:  # the budget spreads the search
        model.sizes = []
        smoothed.sample_counts(x, num=10_000)
        calls.append(model.sizes)
        assert sum(model.sizes) == total  # no extra forward rows: the search is real work
    assert 1 < len(calls) < 5 and {32, 64, 128, 256} <= set(itertools.chain(*calls))
    ((key, chosen),) = smoothed._chosen_batch_sizes().items()
    assert key == ((1, 4, 4), torch.float32, "cpu") and chosen == 128
    assert "'auto' (chosen: 128 for [1, 4, 4] float32 on cpu)" in repr(smoothed)
    # the cost: the search's batches took at most 2% (and the estimate's slack) of the time
    # of the rows served at the best size beyond what they would have taken at it
    assert search_cost(smoothed._auto[key], cost, 128) <= 0.021 * len(calls) * total
    settled = sum(cost(rows) for rows in calls[-1])
    model.sizes = []
    smoothed.sample_counts(x, num=10_000)
    assert set(model.sizes[:-1]) == {128} and sum(model.sizes) == total  # cached
    assert sum(cost(rows) for rows in model.sizes) <= settled
    smoothed.sample_counts(torch.rand(2, 16), num=20_000)  # another shape: tuned again
    assert len(smoothed._auto) == 2


def test_a_broken_budget_fails_the_cost_check(monkeypatch):
    # the same check with the budget ignored: the search costs more than 2%
    monkeypatch.setattr(autobatch, "BUDGET", 1.0)
    cost = peaked(128)
    model = RowCounter(16, cost=cost, clock=FakeClock(monkeypatch))
    smoothed = SmoothedClassifier(model, 0.5)
    x = torch.rand(4, 1, 4, 4)
    smoothed.sample_counts(x, num=10_000)
    assert smoothed._chosen_batch_sizes()  # settled in one call
    assert search_cost(smoothed._auto[_auto_key(x)], cost, 128) > 0.021 * 40_000


def test_auto_uses_the_device_default_when_the_call_is_too_small_to_time():
    model = RowCounter(2)
    smoothed = SmoothedClassifier(model, 0.5)
    smoothed.sample_counts(torch.rand(2, 2), num=100)  # 200 rows: not the 9 batches of 32
    assert model.sizes == [200] and smoothed._chosen_batch_sizes() == {}
    model.sizes.clear()
    smoothed.sample_counts(torch.rand(3, 2), num=300)  # 900 rows: 32 is timed, then used
    assert sum(model.sizes) == 900 and set(model.sizes) == {32, 4}
    assert smoothed._planned_batch_size(torch.rand(1, 2)) == 32


def _search(tuning: AutoBatch, per_row: dict[int, float], rows: int = 10**6) -> list[int]:
    """Drive a search with fixed per-row times; the sizes it runs."""
    tuning.begin_call(rows)
    sizes = []
    while tuning.choice is None and len(sizes) < 1000:
        size, timed = tuning.next_size(rows)
        assert timed
        tuning.record(size, per_row[size] * size)
        sizes.append(size)
    return sizes


@pytest.mark.parametrize(
    ("per_row", "chosen"),
    [
        # noise: 64 looks 3% slower than 32, the search goes on and finds 256
        ({32: 1.0, 64: 1.03, 128: 0.8, 256: 0.7, 512: 1.2}, 256),
        # clearly slower (0.7 / 0.9 < 1.0) in two paired runs: settles
        ({32: 1.0, 64: 0.7, 128: 1.0, 256: 0.1}, 64),
        # two candidates in a row within the noise: settles at the best
        ({32: 1.0, 64: 0.9, 128: 0.92, 256: 0.95, 512: 0.1}, 64),
    ],
)
def test_auto_search_rule(per_row, chosen):
    tuning = AutoBatch.for_device("cpu")
    sizes = _search(tuning, per_row)
    assert tuning.choice == chosen
    # each candidate: a warm-up, then at least 3 timed batches and 512 timed rows, alternating
    # with as many of the best size's (a paired comparison)
    assert sizes[:17] == [32] * 17
    assert sizes[17:34] == [64, 64] + [32, 32, 64] * 5  # 64: 8 timed batches, 32: 16
    assert sizes.count(128) >= 1 + 4


def test_auto_search_compares_in_pairs_so_a_slow_spell_does_not_decide():
    # the machine is 3x slower while 64 is first timed: without pairing 64 would lose to 32
    tuning = AutoBatch.for_device("cpu", largest=64)
    tuning.begin_call(10**6)
    clock = 0
    while tuning.choice is None:
        size, _ = tuning.next_size(10**6)
        slow = 3.0 if 17 <= clock < 30 else 1.0
        tuning.record(size, size * {32: 1.0, 64: 0.8}[size] * slow)
        clock += 1
    assert tuning.choice == 64


def test_auto_search_times_a_clearly_slower_candidate_again_before_it_stops():
    # 64 is faster than 32, but a slow spell hits only 64's batches in its first paired run
    # (1.5x: 64 looks 20% slower than 32): the candidate is timed once more, wins, and the
    # search goes on to the true peak; a candidate that is slower both times ends it
    per_row = {32: 1.0, 64: 0.8, 128: 0.7, 256: 1.5, 512: 0.1}
    tuning = AutoBatch.for_device("cpu")
    tuning.begin_call(10**6)
    runs_of_64 = 0
    sizes = []
    while tuning.choice is None and len(sizes) < 1000:
        size, _ = tuning.next_size(10**6)
        runs_of_64 += size == 64 and not tuning.warmed  # a warm-up batch starts a paired run
        spell = 1.5 if size == 64 and runs_of_64 == 1 else 1.0
        tuning.record(size, size * per_row[size] * spell)
        sizes.append(size)
    assert runs_of_64 == 2 and tuning.choice == 128
    assert sizes.count(256) == 2 * (1 + timed_batches(256))  # 256 timed twice, then the end
    assert 512 not in sizes


def test_auto_search_stops_at_the_last_candidate():
    tuning = AutoBatch.for_device("cpu", largest=100)
    assert tuning.candidates == (32, 64)
    _search(tuning, {32: 1.0, 64: 0.5})
    assert tuning.choice == 64 and tuning.default == 64


def test_auto_gives_the_same_counts_as_an_explicit_batch_size(monkeypatch):
    monkeypatch.setattr(smoothing, "_clock", itertools.count().__next__)  # larger is faster
    x = torch.rand(3, 1, 8, 8)
    model = cnn()
    sizes = []
    model.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    auto = SmoothedClassifier(model, 0.5)
    fixed = SmoothedClassifier(cnn(), 0.5, batch_size=97)
    fixed.model.load_state_dict(model.state_dict())
    a = auto.sample_counts(x, num=5000, generator=gens([1, 2, 3]))
    assert len(set(sizes)) >= 3  # it did run batches of several sizes
    assert torch.equal(a, fixed.sample_counts(x, num=5000, generator=gens([1, 2, 3])))


def test_auto_backs_off_when_tuning_runs_out_of_memory(monkeypatch):
    monkeypatch.setattr(autobatch, "BUDGET", 1.0)  # time every candidate in one call
    monkeypatch.setattr(smoothing, "_clock", itertools.count().__next__)  # larger is faster
    x = torch.rand(2, 4)
    model = RowCounter(4, memory=300)
    expected = SmoothedClassifier(model, 0.5, batch_size=64).sample_counts(
        x, num=20_000, generator=gens([1, 2])
    )
    model.sizes = []
    smoothed = SmoothedClassifier(model, 0.5)
    counts = smoothed.sample_counts(x, num=20_000, generator=gens([1, 2]))
    assert model.refused == [512] and max(model.sizes) == 256
    assert smoothed._chosen_batch_sizes()[_auto_key(x)] <= 256
    assert torch.equal(counts, expected)


def test_auto_halves_the_batch_size_when_a_call_runs_out_of_memory():
    x = torch.rand(2, 4)
    model = RowCounter(4)
    expected = SmoothedClassifier(model, 0.5, batch_size=64).sample_counts(
        x, num=3000, generator=gens([1, 2])
    )
    model.memory, model.sizes = 300, []
    smoothed = SmoothedClassifier(model, 0.5)
    key = ((4,), torch.float32, "cpu")
    smoothed._auto[key] = AutoBatch.for_device("cpu")
    smoothed._auto[key].choice = 2048  # as if tuned with more memory free
    counts = smoothed.sample_counts(x, num=3000, generator=gens([1, 2]))
    assert smoothed._chosen_batch_sizes()[key] == 256 and max(model.sizes) == 256
    assert torch.equal(counts, expected)  # the same noise, whatever the batch size


def test_an_explicit_batch_size_does_not_back_off():
    smoothed = SmoothedClassifier(RowCounter(4, memory=300), 0.5, batch_size=1000)
    with pytest.raises(torch.OutOfMemoryError):
        smoothed.sample_counts(torch.rand(2, 4), num=3000)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ("big", ValueError, "batch_size must be a positive integer or 'auto', got 'big'"),
        (0, ValueError, "batch_size must be a positive integer, got 0"),
        (-5, ValueError, "batch_size must be a positive integer, got -5"),
        (2.5, TypeError, "batch_size must be an integer or 'auto', got float"),
        (True, TypeError, "batch_size must be an integer or 'auto', got bool"),
        (None, TypeError, "batch_size must be an integer or 'auto', got NoneType"),
    ],
)
def test_batch_size_validation(value, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, batch_size=value)


def test_the_runner_records_the_resolved_batch_size(tmp_path):
    from torch.utils.data import TensorDataset

    from rsmooth.runner import certify_dataset

    data = TensorDataset(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))
    smoothed = SmoothedClassifier(nn.Linear(3, 2), 0.5)
    certify_dataset(smoothed, data, tmp_path / "a.tsv", n0=10, n=100, progress=False)
    config = json.loads((tmp_path / "a.tsv.json").read_text())["config"]
    assert config["batch_size"] == 256 and config["batch_size_auto"] is True  # too small to tune
    smoothed._auto[((3,), torch.float32, "cpu")] = AutoBatch.for_device("cpu")
    smoothed._auto[((3,), torch.float32, "cpu")].choice = 48
    certify_dataset(smoothed, data, tmp_path / "b.tsv", n0=10, n=100, progress=False)
    assert json.loads((tmp_path / "b.tsv.json").read_text())["config"]["batch_size"] == 48
    fixed = SmoothedClassifier(nn.Linear(3, 2), 0.5, batch_size=64)
    certify_dataset(fixed, data, tmp_path / "c.tsv", n0=10, n=100, progress=False)
    config = json.loads((tmp_path / "c.tsv.json").read_text())["config"]
    assert config["batch_size"] == 64 and "batch_size_auto" not in config


def test_the_runner_records_the_size_the_search_settled_on(tmp_path, monkeypatch):
    from torch.utils.data import TensorDataset

    from rsmooth.runner import certify_dataset

    monkeypatch.setattr(autobatch, "BUDGET", 1.0)
    monkeypatch.setattr(autobatch, "CANDIDATES", (32, 64, 128))  # default: 128
    data = TensorDataset(torch.rand(3, 3), torch.tensor([0, 1, 0]))
    model = RowCounter(3, cost=peaked(64), clock=FakeClock(monkeypatch))
    smoothed = SmoothedClassifier(model, 0.5)
    certify_dataset(smoothed, data, tmp_path / "a.tsv", n0=10, n=3000, progress=False)
    config = json.loads((tmp_path / "a.tsv.json").read_text())["config"]
    assert smoothed._chosen_batch_sizes() == {((3,), torch.float32, "cpu"): 64}
    assert config["batch_size"] == 64 and config["batch_size_auto"] is True  # planned: 128


# ---------------------------------------------------------------- compile
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_feeds_fixed_shapes_and_compiles_once(fresh_dynamo):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    shapes = []

    def backend(graph, example_inputs):
        shapes.extend(tuple(t.shape) for t in example_inputs if tuple(t.shape[1:]) == (1, 8, 8))
        return counter(graph, example_inputs)

    model = cnn()
    compiled = SmoothedClassifier(model, 0.5, batch_size=64, compile={"backend": backend})
    eager = SmoothedClassifier(model, 0.5, batch_size=64)
    x = torch.rand(3, 1, 8, 8)
    for num, inputs in [(10, x[:1]), (200, x), (37, x[1:])]:  # 10 < 64 rows: padded
        got = compiled.sample_counts(inputs, num=num, generator=torch.Generator().manual_seed(num))
        want = eager.sample_counts(inputs, num=num, generator=torch.Generator().manual_seed(num))
        assert torch.equal(got, want)  # padding rows are discarded
    compiled.certify(x, n=100, n0=10, generator=torch.Generator().manual_seed(0))
    assert counter.frame_count == 1  # no recompilation on later calls
    assert shapes == [(64, 1, 8, 8)]
    assert model.training is False and "compile={'backend'" in repr(compiled)


@pytest.mark.slow
def test_compile_with_the_automatic_batch_size_compiles_once_at_the_settled_size(
    fresh_dynamo, monkeypatch
):
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(autobatch, "BUDGET", 1.0)  # settle within the first call
    monkeypatch.setattr(autobatch, "CANDIDATES", (32, 64, 128))
    monkeypatch.setattr(smoothing, "_clock", itertools.count().__next__)  # larger is faster
    counter = CompileCounter()
    shapes = []

    def backend(graph, example_inputs):
        shapes.extend(tuple(t.shape) for t in example_inputs if tuple(t.shape[1:]) == (1, 8, 8))
        return counter(graph, example_inputs)

    model = cnn()
    compiled = SmoothedClassifier(model, 0.5, compile={"backend": backend})
    eager = SmoothedClassifier(model, 0.5, batch_size=50)
    x = torch.rand(3, 1, 8, 8)
    for num in (3000, 1000):
        got = compiled.sample_counts(x, num=num, generator=torch.Generator().manual_seed(num))
        want = eager.sample_counts(x, num=num, generator=torch.Generator().manual_seed(num))
        assert torch.equal(got, want)
    assert compiled._chosen_batch_sizes()[_auto_key(x)] == 128
    assert counter.frame_count == 1  # the search ran eagerly; compiled once, at the choice
    assert shapes == [(128, 1, 8, 8)]


@pytest.mark.slow
def test_a_compiled_model_must_return_n_by_k_logits(fresh_dynamo):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.Unflatten(1, (3, 2)))
    smoothed = SmoothedClassifier(model, 0.5, batch_size=32, compile={"backend": "eager"})
    with pytest.raises(ValueError, match=r"logits of shape \[N, num_classes\].*\(32, 3, 2\)"):
        smoothed.certify(torch.rand(2, 4), n=20)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ("yes", TypeError, "compile must be a bool or a dict of torch.compile options, got str"),
        ({"dynamic": True}, ValueError, "compile must not set 'dynamic'"),
    ],
)
def test_compile_validation(value, exc, match):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, compile=value)


# ---------------------------------------------------------------- autocast and channels_last
class DtypeProbe(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.dtypes = model, set()

    def forward(self, x):
        out = self.model(x)
        self.dtypes.add(out.dtype)
        return out


def test_bfloat16_autocast_counts_match_float32_on_a_well_separated_model():
    torch.manual_seed(0)  # test-only: fixed weights
    linear = nn.Linear(6, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3, 6) * 4.0)
        linear.bias.zero_()
    x = torch.eye(3, 6)[[0, 1, 2, 0]] * 2.0  # each input far (in sigma units) from the others
    probe = DtypeProbe(linear)
    half = SmoothedClassifier(
        probe, 0.25, batch_size=256, autocast=torch.bfloat16, input_range=None
    )
    full = SmoothedClassifier(linear, 0.25, batch_size=256, input_range=None)
    a = half.certify(x, n=2000, n0=50, generator=torch.Generator().manual_seed(1))
    b = full.certify(x, n=2000, n0=50, generator=torch.Generator().manual_seed(1))
    assert probe.dtypes == {torch.bfloat16}  # the forward passes did run in bfloat16
    assert torch.equal(a.count, b.count) and torch.equal(a.prediction, b.prediction)
    assert a.prediction.tolist() == [0, 1, 2, 0]
    assert "autocast=torch.bfloat16" in repr(half)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ("bf16", TypeError, "autocast must be a torch.dtype or None, got str"),
        (torch.float32, ValueError, "autocast must be torch.bfloat16 or torch.float16, got"),
    ],
)
def test_autocast_validation(value, exc, match):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, autocast=value)


class UnsupportedAutocast:
    """Stands in for torch.autocast with a dtype the device does not support: torch warns."""

    def __init__(self, device_type, dtype):
        warnings.warn("In CPU autocast, but the target dtype is not supported.", stacklevel=2)


def test_autocast_with_a_dtype_the_device_does_not_support(monkeypatch):
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5, autocast=torch.float16)
    monkeypatch.setattr(torch, "autocast", UnsupportedAutocast)
    with pytest.raises(ValueError, match=r"autocast=torch.float16 is not supported on cpu"):
        smoothed.certify(torch.zeros(1, 2), n=20)
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="autocast is not available on device type 'cpu'"):
        smoothed.certify(torch.zeros(1, 2), n=20)


def test_channels_last_models_and_inputs():
    def cnn3():
        torch.manual_seed(0)  # test-only: the same weights in both layouts
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
        ).eval()

    x = torch.rand(3, 3, 8, 8)
    expected = SmoothedClassifier(
        cnn3(), 0.5, batch_size=100, memory_format="preserve"
    ).sample_counts(x, num=300, generator=gens([1, 2, 3]))
    spy = Spy(cnn3().to(memory_format=torch.channels_last))
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=100)
    x_last = x.contiguous(memory_format=torch.channels_last)
    assert not x_last.is_contiguous()
    counts = smoothed.sample_counts(x_last, num=300, generator=gens([1, 2, 3]))
    assert torch.equal(counts, expected)  # the same noise per element, whatever the layout
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in spy.seen)
    assert all(not b.is_contiguous() for b in spy.seen)


def fixed_rand(*shape: int) -> torch.Tensor:
    """Uniform [0, 1) values that do not depend on the tests run before."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


class ViewsItsInput(nn.Module):
    """Flattens with ``view``, which a channels_last batch refuses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # test-only: fixed weights
        self.linear = nn.Linear(48, 4)

    def forward(self, x):
        return self.linear(x.view(x.shape[0], -1))


class ReadsRawMemory(ViewsItsInput):
    """Flattens the input's storage as if it were contiguous: wrong for channels_last."""

    def forward(self, x):
        return self.linear(torch.as_strided(x, (x.shape[0], 48), (48, 1)))


def bn_cnn():
    torch.manual_seed(0)  # test-only: fixed weights
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)
    )


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_auto_memory_format_gives_a_cpu_model_channels_last_batches(autocast):
    model = bn_cnn().train()  # in train mode: the engine must use eval and restore train
    model[1].running_mean.fill_(0.1)
    running = [t.clone() for t in (model[1].running_mean, model[1].running_var)]
    spy = Spy(model)  # a folded copy would not record its batches: the spy sees the model's
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=64, autocast=autocast, fold_batchnorm=False)
    x = fixed_rand(3, 3, 4, 4)
    counts = smoothed.sample_counts(x, num=300, generator=gens([1, 2, 3]))
    # the layout check: the clean inputs once in each layout; then every batch channels_last
    assert [b.shape[0] for b in spy.seen[:2]] == [3, 3]
    assert spy.seen[0].is_contiguous() and not spy.seen[1].is_contiguous()
    votes = spy.seen[2:]
    assert sum(b.shape[0] for b in votes) == 900
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in votes)
    assert all(not b.is_contiguous() for b in votes)
    assert "memory_format='auto' (channels_last for [3, 4, 4] float32 on cpu)" in repr(smoothed)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running[0])
    assert torch.equal(model[1].running_var, running[1])
    spy.seen.clear()  # checked once per input shape, dtype and device
    smoothed.sample_counts(x, num=100, generator=gens([1, 2, 3]))
    assert sum(b.shape[0] for b in spy.seen) == 300
    # float32: the same votes as the standard layout, up to a rounding difference for a sample
    # on a decision boundary (bfloat16 rounds far more coarsely, and how depends on the CPU)
    if autocast is None:
        standard = SmoothedClassifier(
            model, 0.5, batch_size=64, memory_format="preserve", fold_batchnorm=False
        )
        want = standard.sample_counts(x, num=300, generator=gens([1, 2, 3]))
        assert int((counts - want).abs().sum()) <= 4


def test_auto_memory_format_keeps_the_standard_layout_for_a_model_that_views_its_input():
    x = fixed_rand(2, 3, 4, 4)
    spy = Spy(ViewsItsInput())
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = smoothed.sample_counts(x, num=200, generator=gens([1, 2]))
    assert not spy.seen[1].is_contiguous()  # the check's try, which the model refused
    assert all(b.is_contiguous() for b in spy.seen[2:])
    assert "channels_last" not in repr(smoothed)
    plain = SmoothedClassifier(ViewsItsInput(), 0.5, batch_size=64, memory_format="preserve")
    assert torch.equal(counts, plain.sample_counts(x, num=200, generator=gens([1, 2])))
    forced = SmoothedClassifier(ViewsItsInput(), 0.5, memory_format="channels_last")
    with pytest.raises(RuntimeError, match="view size"):  # asked for explicitly: its error
        forced.sample_counts(x, num=20)


@pytest.mark.parametrize(
    ("name", "value", "exc", "match"),
    [
        ("sigma", -1.0, ValueError, "sigma must be positive"),
        ("sigma", "big", TypeError, "sigma must be a real number"),
        ("num_classes", 1, ValueError, "num_classes must be an integer >= 2, got 1"),
        ("batch_size", 0, ValueError, "batch_size must be a positive integer, got 0"),
        ("batch_size", "fast", ValueError, "batch_size must be .* or 'auto', got 'fast'"),
        ("nonfinite", "ignore", ValueError, "nonfinite must be one of .*, got 'ignore'"),
        ("compile", "yes", TypeError, "compile must be a bool or a dict"),
        ("autocast", torch.int8, ValueError, "autocast must be torch.bfloat16 or"),
        ("input_range", (1.0, 0.0), ValueError, r"input_range must be a pair .* got \(1.0, 0.0\)"),
        ("memory_format", "nhwc", ValueError, "memory_format must be one of .*, got 'nhwc'"),
        ("fold_batchnorm", "yes", ValueError, "fold_batchnorm must be True, False or 'auto'"),
        ("model", lambda x: x, TypeError, "model must be a torch.nn.Module, got function"),
    ],
)
def test_a_setting_assigned_after_construction_is_checked_like_the_argument(
    name, value, exc, match
):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(**{"model": nn.Linear(2, 2), "sigma": 0.5, name: value})
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5)
    before = getattr(smoothed, name)
    with pytest.raises(exc, match=match):
        setattr(smoothed, name, value)
    assert getattr(smoothed, name) is before  # the old setting stays


def test_assigning_another_model_drops_the_choices_made_for_the_old_one():
    x = fixed_rand(2, 3, 4, 4)
    smoothed = SmoothedClassifier(bn_cnn(), 0.5)
    smoothed.sample_counts(x, num=2000, generator=gens([1, 2]))
    assert "channels_last" in repr(smoothed) and smoothed._folded.folded_layers() == 1
    assert smoothed._auto  # the batch-size search started
    # a model that views its input cannot take the channels_last batches chosen for the CNN
    before = copy.copy(smoothed)
    smoothed.model = ViewsItsInput()
    assert not smoothed._auto and "channels_last" not in repr(smoothed)
    assert smoothed._folded.folded_layers() == 0
    # a shallow copy made before keeps its own choices
    assert before._auto and "channels_last" in repr(before) and before._folded.folded_layers()
    counts = smoothed.sample_counts(x, num=300, generator=gens([1, 2]))
    plain = SmoothedClassifier(ViewsItsInput(), 0.5)
    assert torch.equal(counts, plain.sample_counts(x, num=300, generator=gens([1, 2])))
    assert smoothed._folded.folded_layers() == 0


def test_assigning_a_model_or_compile_compiles_what_is_assigned(monkeypatch):
    compiled = []

    def fake_compile(model, **options):  # records what would be compiled; runs it eagerly
        compiled.append((model, options))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    first, second = nn.Linear(2, 3), nn.Linear(2, 3)
    smoothed = SmoothedClassifier(first, 0.5, compile=True, input_range=None)
    smoothed.model = second
    assert smoothed._compiled is second
    smoothed.compile = {"mode": "max-autotune"}
    smoothed.compile = False
    assert smoothed._compiled is None
    assert compiled == [(first, {"dynamic": False}), (second, {"dynamic": False})] + [
        (second, {"dynamic": False, "mode": "max-autotune"})
    ]
    x = torch.randn(2, 2)
    counts = smoothed.sample_counts(x, num=50, generator=gens([1, 2]))
    fresh = SmoothedClassifier(second, 0.5, input_range=None)
    assert torch.equal(counts, fresh.sample_counts(x, num=50, generator=gens([1, 2])))


def test_a_setting_whose_compile_fails_changes_nothing(monkeypatch):
    def fake_compile(model, **options):
        if options.get("mode") == "bogus" or isinstance(model, nn.Bilinear):
            raise RuntimeError("cannot compile")
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    first = nn.Linear(2, 3)
    smoothed = SmoothedClassifier(first, 0.5, compile=True, input_range=None)
    smoothed.sample_counts(torch.zeros(1, 2), num=64)
    state = dict(vars(smoothed))
    with pytest.raises(RuntimeError, match="cannot compile"):
        smoothed.compile = {"mode": "bogus"}
    with pytest.raises(RuntimeError, match="cannot compile"):
        smoothed.model = nn.Bilinear(2, 2, 3)
    assert vars(smoothed) == state and smoothed._compiled is first and smoothed._auto


def test_assigning_autocast_checks_the_new_dtype_on_the_device(monkeypatch):
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5, autocast=torch.bfloat16)
    smoothed.certify(torch.zeros(1, 2), n=20)  # bfloat16 is checked and accepted on the CPU

    monkeypatch.setattr(torch, "autocast", UnsupportedAutocast)
    smoothed.autocast = torch.float16
    with pytest.raises(ValueError, match=r"autocast=torch.float16 is not supported on cpu"):
        smoothed.certify(torch.zeros(1, 2), n=20)


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])  # bfloat16: a looser tolerance
def test_auto_memory_format_refuses_a_model_whose_logits_depend_on_the_layout(autocast):
    x = fixed_rand(2, 3, 4, 4)
    smoothed = SmoothedClassifier(ReadsRawMemory(), 0.5, batch_size=64, autocast=autocast)
    with pytest.warns(RuntimeWarning, match="differ from those on the same inputs") as caught:
        counts = smoothed.sample_counts(x, num=400, generator=gens([1, 2]))
    assert caught[0].filename == __file__  # it points at the caller's line, not at rsmooth
    plain = SmoothedClassifier(
        ReadsRawMemory(), 0.5, batch_size=64, autocast=autocast, memory_format="preserve"
    )
    assert torch.equal(counts, plain.sample_counts(x, num=400, generator=gens([1, 2])))
    # without the check (channels_last forced) this model's votes are wrong: the check matters
    forced = SmoothedClassifier(
        ReadsRawMemory(), 0.5, batch_size=64, autocast=autocast, memory_format="channels_last"
    )
    assert not torch.equal(counts, forced.sample_counts(x, num=400, generator=gens([1, 2])))


class NaNForDarkImages(nn.Module):
    """A small CNN whose logits are NaN for an input whose mean is below 0.2."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = bn_cnn().eval()

    def forward(self, x):
        dark = x.mean(dim=(1, 2, 3)) < 0.2
        return self.cnn(x).masked_fill(dark[:, None], float("nan"))


def test_auto_memory_format_check_accepts_nan_logits_in_both_layouts():
    x = fixed_rand(3, 3, 4, 4)
    x[1] = 0.0  # NaN logits for the clean input (in both layouts), and for some noisy samples
    smoothed = SmoothedClassifier(NaNForDarkImages(), 0.1, batch_size=64, nonfinite="count_against")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = smoothed.sample_counts(x, num=200, generator=gens([1, 2, 3]))
    assert smoothed._layouts == {((3, 4, 4), torch.float32, "cpu"): True}
    assert counts[1].sum() < 200 and counts[0].sum() == counts[2].sum() == 200


def test_the_layout_check_respects_an_integer_batch_size():
    spy = Spy(bn_cnn().eval())
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=5, fold_batchnorm=False)
    smoothed.sample_counts(fixed_rand(40, 3, 4, 4), num=3)
    assert max(b.shape[0] for b in spy.seen) == 5
    # the check: the first 32 inputs in pieces of 5, in each layout (the same rows as "auto")
    checked = spy.seen[:14]
    assert [b.shape[0] for b in checked] == [5, 5, 5, 5, 5, 5, 2] * 2
    assert all(b.is_contiguous() for b in checked[:7])
    assert not any(b.is_contiguous() for b in checked[7:])


@pytest.mark.slow
def test_compile_with_channels_last_batches_compiles_once(fresh_dynamo):
    from torch._dynamo.testing import CompileCounter

    counter, layouts = CompileCounter(), []

    def backend(graph, example_inputs):
        layouts.extend(
            t.is_contiguous(memory_format=torch.channels_last)
            for t in example_inputs
            if tuple(t.shape[1:]) == (3, 4, 4)
        )
        return counter(graph, example_inputs)

    model = bn_cnn().eval()
    compiled = SmoothedClassifier(model, 0.5, batch_size=64, compile={"backend": backend})
    eager = SmoothedClassifier(model, 0.5, batch_size=64)
    x = fixed_rand(3, 3, 4, 4)
    for num in (300, 100):
        got = compiled.sample_counts(x, num=num, generator=gens([num, 1, 2]))
        assert torch.equal(got, eager.sample_counts(x, num=num, generator=gens([num, 1, 2])))
    assert counter.frame_count == 1 and layouts == [True]


def test_the_runner_records_the_memory_format_and_the_layout(tmp_path):
    from torch.utils.data import TensorDataset

    from rsmooth.runner import certify_dataset

    data = TensorDataset(fixed_rand(2, 3, 4, 4), torch.tensor([0, 1]))
    for model, layout in ((bn_cnn().eval(), True), (ViewsItsInput(), False)):
        out = tmp_path / f"{layout}.tsv"
        certify_dataset(SmoothedClassifier(model, 0.5), data, out, n0=10, n=50, progress=False)
        config = json.loads(out.with_name(out.name + ".json").read_text())["config"]
        assert config["memory_format"] == "auto" and config["channels_last"] is layout
    fixed = SmoothedClassifier(bn_cnn().eval(), 0.5, memory_format="preserve")
    certify_dataset(fixed, data, tmp_path / "p.tsv", n0=10, n=50, progress=False)
    config = json.loads((tmp_path / "p.tsv.json").read_text())["config"]
    assert config["memory_format"] == "preserve" and "channels_last" not in config


def has_channels_last_strides(batch: torch.Tensor) -> bool:
    """Whether ``batch`` has channels-last strides, which ``is_contiguous`` cannot tell for one
    channel or 1x1 images (both layouts are contiguous there)."""
    return batch.stride() == torch.empty(batch.shape, memory_format=torch.channels_last).stride()


@pytest.mark.parametrize(
    "inputs",
    [
        fixed_rand(2, 12),  # not images
        fixed_rand(2, 1, 4, 4),  # one channel: contiguous either way, but other strides
        fixed_rand(2, 3, 1, 1),  # 1x1 images: the same
        fixed_rand(2, 3, 2, 2).to(torch.float64),  # checked like float32, on its own key
    ],
)
def test_auto_memory_format_checks_every_image_shape_and_leaves_other_inputs_alone(inputs):
    features = math.prod(inputs.shape[1:])
    spy = Spy(nn.Sequential(nn.Flatten(), nn.Linear(features, 3)).to(inputs.dtype))
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=64)
    smoothed.sample_counts(inputs, num=100, generator=gens([1, 2]))
    image = inputs.dim() == 4
    assert sum(b.shape[0] for b in spy.seen) == 200 + (2 * 2 if image else 0)
    votes = spy.seen[2:] if image else spy.seen
    assert sum(b.shape[0] for b in votes) == 200
    if image:  # checked (the standard layout, then channels_last), then channels_last strides
        assert not has_channels_last_strides(spy.seen[0])
        assert has_channels_last_strides(spy.seen[1])
        assert all(has_channels_last_strides(b) for b in votes)
        assert f"{list(inputs.shape[1:])} {str(inputs.dtype)[6:]} on cpu" in repr(smoothed)
    else:
        assert all(b.is_contiguous() for b in spy.seen)
        assert "channels_last" not in repr(smoothed)


def one_channel_cnn() -> nn.Module:
    torch.manual_seed(0)  # test-only: fixed weights
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 4),
    ).eval()


def test_one_channel_images_reach_the_model_with_channels_last_strides():
    # A one-channel batch is contiguous in both layouts, but a convolution picks its algorithm
    # (and its output's layout) from the strides: with channels-last ones every activation is
    # channels_last, which oneDNN runs faster (LeNet: about 1.6x on two CPU cores).
    x = fixed_rand(3, 1, 8, 8)
    spy = Spy(one_channel_cnn())
    activations: list[torch.Tensor] = []
    spy.model[2].register_forward_hook(lambda module, args, out: activations.append(out))
    counts = SmoothedClassifier(spy, 0.5, batch_size=64).sample_counts(
        x, num=300, generator=gens([1, 2, 3])
    )
    votes = spy.seen[2:]
    assert sum(b.shape[0] for b in votes) == 900
    assert all(has_channels_last_strides(b) for b in votes)
    assert all(a.is_contiguous(memory_format=torch.channels_last) for a in activations[2:])
    assert not any(a.is_contiguous() for a in activations[2:])
    # the same noise per element; the votes of the standard layout up to rounding at a boundary
    standard = SmoothedClassifier(one_channel_cnn(), 0.5, batch_size=64, memory_format="preserve")
    want = standard.sample_counts(x, num=300, generator=gens([1, 2, 3]))
    assert int((counts - want).abs().sum()) <= 4
    # forced: the same strides without the check
    forced = Spy(one_channel_cnn())
    SmoothedClassifier(forced, 0.5, batch_size=64, memory_format="channels_last").sample_counts(
        x, num=10, generator=gens([1, 2, 3])
    )
    assert len(forced.seen) == 1 and has_channels_last_strides(forced.seen[0])


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (None, TypeError, r"memory_format must be one of 'auto', 'preserve', 'channels_last', got"),
        ("nhwc", ValueError, r"memory_format must be one of .*, got 'nhwc'"),
    ],
)
def test_memory_format_validation(value, exc, match):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, memory_format=value)


def test_channels_last_memory_format_needs_image_inputs():
    smoothed = SmoothedClassifier(nn.Linear(3, 2), 0.5, memory_format="channels_last")
    assert "memory_format='channels_last'" in repr(smoothed)
    with pytest.raises(ValueError, match=r"needs 4-D .* or 5-D .* inputs, got shape \(2, 3\)"):
        smoothed.sample_counts(fixed_rand(2, 3), num=10)


# ---------------------------------------------------------------- command line
def test_cli_batch_size_and_compile_options(capsys):
    from rsmooth.cli import build_parser

    base = ["certify", "--model", "m:f", "--dataset", "digits", "--sigma", "0.5", "--out", "o"]
    args = build_parser().parse_args(base)
    assert args.batch_size == "auto" and args.compile is False and args.memory_format == "auto"
    args = build_parser().parse_args(
        [*base, "--batch-size", "128", "--compile", "--memory-format", "preserve"]
    )
    assert args.batch_size == 128 and args.compile is True and args.memory_format == "preserve"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--batch-size", "big"])
    assert "batch size must be a positive integer or 'auto', got 'big'" in capsys.readouterr().err


# ---------------------------------------------------------------- the throughput benchmark
@pytest.mark.slow
def test_certify_throughput_benchmark_smoke(tmp_path):
    bench = load_script("benchmarks/certify_throughput.py", "rsmooth_bench_certify_throughput")
    out = tmp_path / "perf"
    argv = ["--quick", "--no-compile", "--models", "lenet", "--floor-samples", "64"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    (row,) = result["rows"]
    assert set(row["floor"]) == {str(b) for b in bench.FLOOR_BATCH_SIZES}
    assert row["certify_auto"] > 0 and row["memory_gib"] >= 0
    assert "bare-forward floor" in out.with_suffix(".md").read_text()
