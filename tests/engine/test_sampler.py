"""The sampler: a stream of inputs through full forward batches, results as inputs finish."""

import itertools

import pytest
import torch
from conftest import Spy, cnn, fixed_rand, flat_model
from torch import nn

from rsmooth._engine.batching import AutoBatch, FixedBatch
from rsmooth._engine.forward import ForwardRunner
from rsmooth._engine.sampler import Draw, Item, NonFiniteError, Sampler, Votes
from rsmooth._engine.streams import Stream, input_seeds
from rsmooth.procedures import Certify, Counts
from rsmooth.sequential import RadiusGrid


def run(model, procedure, x, seeds, *, size=64, group=None, batching=None, order=None, extras=None):
    """Run ``procedure`` over the inputs in ``order``; (results by input, finishing order)."""
    sampler = Sampler(ForwardRunner(model), batching or FixedBatch(size), 0.5, group=group)
    order = range(x.shape[0]) if order is None else order
    results, finished = {}, []

    def record(key, result):
        results[key] = result
        finished.append(key)

    items = (Item(j, x[j], seeds[j], None if extras is None else extras[j]) for j in order)
    sampler.run(procedure, items, record, probe=x)
    return results, finished


def spread_inputs(batch: int) -> torch.Tensor:
    """Inputs at several distances from a linear decision boundary: a grid decides them after
    very different numbers of samples, so they finish out of order."""
    x = torch.zeros(batch, 4)
    x[:, 0] = torch.linspace(-1.5, 1.5, batch)
    return x


def boundary_model() -> nn.Module:
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        linear.bias.zero_()
    return linear


@pytest.mark.parametrize("size", [1, 7, 64, 1000])
@pytest.mark.parametrize("group", [1, 3])
def test_a_stream_gives_each_input_its_own_result_bit_for_bit(size, group, device):
    x = spread_inputs(12).to(device)
    seeds = input_seeds(12, torch.Generator().manual_seed(0))
    model = boundary_model().to(device)
    procedures = {
        "certify": Certify(n=300, n0=20, alpha=0.01).bind(0.5),
        "grid": RadiusGrid((0.1, 0.3, 0.6), alpha=0.01, max_n=5000, n0=20).bind(0.5),
    }
    for name, procedure in procedures.items():
        alone = {
            j: run(model, procedure, x[j : j + 1], [seeds[j]], size=size)[0][0] for j in range(12)
        }
        together, finished = run(model, procedure, x, seeds, size=size, group=group)
        assert together == alone, name
        if name == "grid" and size >= 64:  # many in flight; near the boundary: more looks
            assert finished != sorted(finished)
        backwards, _ = run(
            model, procedure, x, seeds, size=size, group=group, order=range(11, -1, -1)
        )
        assert backwards == alone, name


def test_every_permutation_of_a_small_stream_gives_the_same_results():
    x = spread_inputs(4)
    seeds = input_seeds(4, torch.Generator().manual_seed(1))
    grid = RadiusGrid((0.2, 0.5), alpha=0.01, max_n=3000, n0=10).bind(0.5)
    reference, _ = run(boundary_model(), grid, x, seeds, size=50)
    orders = set()
    for order in itertools.permutations(range(4)):
        results, finished = run(boundary_model(), grid, x, seeds, size=50, order=order)
        assert results == reference
        orders.add(tuple(finished))
    assert len(orders) >= 4  # the inputs finished in several different orders


def test_forward_batches_stay_full_until_the_stream_runs_dry():
    x = spread_inputs(40)
    seeds = input_seeds(40, torch.Generator().manual_seed(2))
    spy = Spy(boundary_model())
    grid = RadiusGrid((0.1, 0.3, 0.6), alpha=0.01, max_n=5000, n0=20).bind(0.5)
    run(spy, grid, x, seeds, size=64)
    sizes = [b.shape[0] for b in spy.seen]
    # partial batches only at the very end, when no input is left to admit
    first_partial = next(i for i, s in enumerate(sizes) if s < 64)
    assert first_partial > 0.8 * len(sizes)
    assert sum(s < 64 for s in sizes) < 0.25 * len(sizes)


def test_the_model_sees_every_noisy_row_of_every_input():
    seen = []

    class Records(nn.Module):  # a Python side effect in forward
        def __init__(self):
            super().__init__()
            self.linear = flat_model(16, 3)

        def forward(self, x):
            seen.append(x.shape[0])
            return self.linear(x)

    x = fixed_rand(3, 16)
    seeds = input_seeds(3, torch.Generator().manual_seed(0))
    run(Records(), Certify(n=111, n0=7).bind(0.5), x, seeds, size=50)
    assert sum(seen) == 3 * (111 + 7)


def test_one_synchronisation_per_group_of_forward_batches():
    x = fixed_rand(6, 16)
    seeds = input_seeds(6, torch.Generator().manual_seed(0))
    spy = Spy(flat_model(16, 3))
    synced = []
    sampler = Sampler(ForwardRunner(spy), FixedBatch(32), 0.5, group=4)
    sampler.run(
        Counts(400),
        (Item(j, x[j], seeds[j]) for j in range(6)),
        lambda key, votes: None,
        probe=x,
        on_progress=lambda done, drawn: synced.append((done, drawn)),
    )
    batches = len(spy.seen)
    assert batches == 6 * 400 // 32
    assert len(synced) == -(-batches // 4)
    assert sum(d for _, d in synced) == 2400 and sum(n for n, _ in synced) == 6


def test_counts_are_votes_of_the_finite_samples(device):
    x = fixed_rand(2, 1, 8, 8).to(device)
    seeds = input_seeds(2, torch.Generator().manual_seed(4))
    results, _ = run(cnn().to(device), Counts(500), x, seeds, size=37)
    for votes in results.values():
        assert isinstance(votes, Votes) and int(votes.counts.sum()) == 500 and votes.nonfinite == 0
        assert (votes.counts > 0).sum() > 2  # the votes spread: noise changes would show


class NaNAbove(nn.Module):
    """Class 0, with NaN logits for inputs whose first coordinate is above 0.5."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3)
        out[:, 0] = 1.0
        out[x[:, 0] > 0.5] = float("nan")
        return out


def test_nonfinite_logits_raise_naming_the_inputs():
    x = torch.tensor([[-100.0, 0.0], [100.0, 0.0], [100.0, 0.0]])
    seeds = input_seeds(3, torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteError, match=r"input 1: 50, input 2: 50\)"):
        run(NaNAbove(), Counts(50), x, seeds, size=1000)
    sampler = Sampler(ForwardRunner(NaNAbove()), FixedBatch(64), 0.5, nonfinite="count_against")
    out = {}
    sampler.run(Counts(50), (Item(j, x[j], seeds[j]) for j in range(3)), out.__setitem__, probe=x)
    assert out[0].nonfinite == 0 and out[1].nonfinite == 50 and int(out[1].counts.sum()) == 0


def test_stop_ends_the_stream_and_reports_only_finished_inputs():
    x = fixed_rand(10, 4)
    seeds = input_seeds(10, torch.Generator().manual_seed(0))
    reported = []
    sampler = Sampler(ForwardRunner(flat_model(4, 2)), FixedBatch(50), 0.5)
    sampler.run(
        Counts(120),
        (Item(j, x[j], seeds[j]) for j in range(10)),
        lambda key, votes: reported.append((key, int(votes.counts.sum()))),
        probe=x,
        stop=lambda: len(reported) >= 3,
    )
    assert 3 <= len(reported) < 10
    assert all(total == 120 for _, total in reported)  # no partial input is reported


class Limited(nn.Module):
    """A linear model that runs out of memory on batches larger than ``memory``."""

    def __init__(self, memory: int) -> None:
        super().__init__()
        self.linear = flat_model(4, 3)
        self.memory, self.sizes = memory, []

    def forward(self, x):
        if x.shape[0] > self.memory:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.sizes.append(x.shape[0])
        return self.linear(x)


def test_the_default_batch_size_halves_on_out_of_memory_with_the_same_counts():
    x = fixed_rand(2, 4)
    seeds = input_seeds(2, torch.Generator().manual_seed(0))
    expected, _ = run(Limited(10**6), Counts(3000), x, seeds, size=64)
    model = Limited(300)
    batching = FixedBatch(2048, halve=True)
    got, _ = run(model, Counts(3000), x, seeds, batching=batching)
    assert batching.size == 256 and max(model.sizes) == 256
    assert {k: v.counts.tolist() for k, v in got.items()} == {
        k: v.counts.tolist() for k, v in expected.items()
    }
    with pytest.raises(torch.OutOfMemoryError):  # an explicit size is the user's: not changed
        run(Limited(300), Counts(3000), x, seeds, batching=FixedBatch(1000))


class Clocked(nn.Module):
    """A linear model that advances a fake clock by a cost per forward pass: the fastest batch
    size is ``peak`` (per-row cost doubles above it), whatever the machine's load."""

    def __init__(self, peak: int) -> None:
        super().__init__()
        self.linear = flat_model(4, 3)
        self.now, self.peak, self.sizes = 0.0, peak, []

    def forward(self, x):
        rows = x.shape[0]
        self.sizes.append(rows)
        self.now += (0.001 + 1e-5 * rows) * (2.0 if rows > self.peak else 1.0)
        return self.linear(x)


def test_the_automatic_search_settles_on_the_fastest_size_with_the_same_counts():
    x = fixed_rand(4, 4)
    seeds = input_seeds(4, torch.Generator().manual_seed(0))
    model = Clocked(peak=128)
    batching = AutoBatch.for_device("cpu", clock=lambda: model.now)
    for _ in range(8):  # the budget spreads the search over calls
        if batching.choice is not None:
            break
        got, _ = run(model, Counts(20_000), x, seeds, batching=batching)
    assert batching.choice == 128
    assert {32, 64, 128, 256} <= set(model.sizes)
    fixed, _ = run(model, Counts(20_000), x, seeds, size=97)
    assert {k: v.counts.tolist() for k, v in got.items()} == {
        k: v.counts.tolist() for k, v in fixed.items()
    }


def test_a_job_that_asks_for_nothing_finishes_at_once():
    class Nothing:
        def job(self, item):
            (votes,) = yield (Draw(Stream.COUNTS, 5, 5),)
            return votes.nonfinite

    x = fixed_rand(2, 4)
    out, _ = run(flat_model(4, 2), Nothing(), x, [1, 2])
    assert out == {0: 0, 1: 0}


def test_inputs_of_another_shape_are_refused():
    x = fixed_rand(2, 4)
    sampler = Sampler(ForwardRunner(flat_model(4, 2)), FixedBatch(8), 0.5)
    with pytest.raises(ValueError, match=r"every input of a stream must have shape \(4,\)"):
        sampler.run(Counts(5), iter([Item(0, torch.zeros(5), 1)]), lambda k, v: None, probe=x)
