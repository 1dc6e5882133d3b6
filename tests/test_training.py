"""Tests of rsmooth.training: the prior table, p_correct, radius weights, the sampling schedule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, norm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rsmooth.training as training
from rsmooth import SmoothedClassifier
from rsmooth.runner import input_seed
from rsmooth.training import (
    EasySampleSchedule,
    IndexedDataset,
    p_correct,
    prediction_table,
    radius_weights,
)
from tests.conftest import LinearTwoClass


def three_class_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()


def dataset(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_prediction_table_equals_per_example_counting():
    """Every row is that example's own vote count, from the stream seeded by (base seed, index)."""
    model, data = three_class_model(), dataset()
    table = prediction_table(
        model, data, 0.5, 40, batch_size=100, generator=torch.Generator().manual_seed(3)
    )
    base = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    smoothed = SmoothedClassifier(model, 0.5, batch_size=100)
    for i in range(len(data)):
        g = torch.Generator().manual_seed(input_seed(base, i))
        counts = smoothed.sample_counts(data[i][0][None], num=40, generator=[g])[0]
        assert table[i].tolist() == (counts.double() / 40).float().tolist()
    assert table.dtype == torch.float32 and table.shape == (7, 3)
    torch.testing.assert_close(table.sum(1), torch.ones(7))
    assert model.training  # the estimate ran in eval mode and restored the mode


def test_prediction_table_does_not_depend_on_grouping_and_is_seeded():
    model, data = three_class_model(), dataset()

    def table(seed, batch_size):
        g = torch.Generator().manual_seed(seed)
        return prediction_table(model, data, 0.5, 50, batch_size=batch_size, generator=g)

    assert torch.equal(table(0, 400), table(0, 100))  # 8 vs 2 examples per engine call
    assert not torch.equal(table(0, 400), table(1, 400))


def test_prediction_table_matches_the_closed_form_for_a_linear_model():
    """f(x) = 0 iff w.x + b > 0, so P(class 0) = Phi((w.x + b) / (sigma ||w||))."""
    w = torch.tensor([1.0, -1.0])
    model = LinearTwoClass(w, 0.0)
    x = torch.tensor([[0.3, 0.1], [0.1, 0.3], [0.5, 0.5]])
    data = TensorDataset(x, torch.zeros(3, dtype=torch.long))
    n = 4000
    table = prediction_table(model, data, 0.25, n, generator=torch.Generator().manual_seed(0))
    expected = norm.cdf(((x @ w) / (0.25 * w.norm())).numpy())
    # 5 binomial standard deviations (at most 0.008 for n = 4000)
    assert table[:, 0].numpy() == pytest.approx(expected, abs=5 * 0.5 / n**0.5)
    p = p_correct(model, data, 0.25, n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.float(), table[:, 0])


def test_p_correct_is_the_label_column():
    model, data = three_class_model(), dataset()
    g = lambda: torch.Generator().manual_seed(5)
    table = prediction_table(model, data, 0.5, 32, generator=g())
    p = p_correct(model, data, 0.5, 32, generator=g())
    labels = data.tensors[1]
    assert p.dtype == torch.float64
    torch.testing.assert_close(p.float(), table[torch.arange(7), labels])
    assert set((p * 32).round().tolist()) <= set(range(33))


def test_progress_is_reported(capsys):
    model, data = three_class_model(), dataset()
    prediction_table(model, data, 0.5, 10, progress=True)
    err = capsys.readouterr().err
    assert "prediction table" in err and "7" in err


def test_radius_weights_table():
    """The five values of the official weights (one-sided 90 % Clopper-Pearson on 16 samples)."""
    p = torch.arange(17, dtype=torch.float64) / 16
    w = radius_weights(p)
    spec = {12: 0.1537, 13: 0.3286, 14: 0.5257, 15: 0.7649, 16: 1.1075}
    for k in range(17):
        kk = max(k, 12)  # clipped at 0.75
        assert float(w[k]) == pytest.approx(spec[kk], abs=5e-5)
        assert float(w[k]) == pytest.approx(norm.ppf(beta.ppf(0.1, kk, 17 - kk)), rel=1e-9)
    assert radius_weights(torch.tensor([[1.0]])).shape == (1, 1)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (([0.5],), {}, TypeError, "p must be a torch.Tensor, got list"),
        ((torch.tensor([1.5]),), {}, ValueError, r"p must hold probabilities in \[0, 1\]"),
        ((torch.tensor([float("nan")]),), {}, ValueError, "p must hold probabilities"),
        ((torch.tensor([0.5]),), {"num_samples": 0}, ValueError, "num_samples must be a positive"),
        ((torch.tensor([0.5]),), {"clip": 1.5}, ValueError, r"clip must be in \(0, 1\], got 1.5"),
        ((torch.tensor([0.5]),), {"alpha": 1.0}, ValueError, "alpha must be in the open interval"),
    ],
)
def test_radius_weights_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        radius_weights(*args, **kwargs)


def test_indexed_dataset():
    data = IndexedDataset(dataset(5))
    assert len(data) == 5
    x, y, idx = next(iter(DataLoader(data, batch_size=5, shuffle=False)))
    assert idx.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(x, dataset(5).tensors[0]) and torch.equal(y, dataset(5).tensors[1])
    assert IndexedDataset(torch.arange(3))[1] == (torch.tensor(1), 1)
    with pytest.raises(TypeError, match="dataset must be a map-style Dataset, got int"):
        IndexedDataset(3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"threshold": 1.5}, ValueError, r"threshold must be in \[0, 1\], got 1.5"),
        ({"threshold": -0.1}, ValueError, r"threshold must be in \[0, 1\], got -0.1"),
        ({"threshold": "0.4"}, TypeError, "threshold must be a real number, got str"),
        ({"discard_epoch": -1}, ValueError, "discard_epoch must be an integer >= 0, got -1"),
        ({"sigma": 0.0}, ValueError, "sigma must be positive and finite, got 0.0"),
        ({"reweight_every": 0}, ValueError, "reweight_every must be a positive integer, got 0"),
        ({"num_samples_discard": 0}, ValueError, "num_samples_discard must be a positive"),
        ({"epoch_size": 0}, ValueError, "epoch_size must be a positive integer, got 0"),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator, got int"),
    ],
)
def test_schedule_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EasySampleSchedule(**{"threshold": 0.4, "discard_epoch": 2, "sigma": 0.5, **kwargs})


def test_helpers_bad_arguments():
    model, data = three_class_model(), dataset()
    with pytest.raises(ValueError, match="sigma must be positive"):
        prediction_table(model, data, -1.0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        p_correct(model, data, 0.5, 0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        prediction_table("model", data)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        prediction_table(model, data, generator=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset must be a non-empty"):
        prediction_table(model, TensorDataset(torch.zeros(0, 4), torch.zeros(0)))


@pytest.mark.parametrize("function", [prediction_table, p_correct])
def test_a_data_loader_is_refused_naming_its_dataset(function):
    # issue 20: prediction_table(model, DataLoader) failed with a raw torch error
    model, data = three_class_model(), dataset()
    loader = DataLoader(data, batch_size=4, shuffle=True)
    name = function.__name__
    with pytest.raises(
        TypeError,
        match=rf"got a DataLoader: pass its dataset, e.g. {name}\(model, loader.dataset\)",
    ):
        function(model, loader, 0.25, 10)
    assert function(model, loader.dataset, 0.25, 10).shape[0] == len(data)


def test_a_smoothed_classifier_is_refused_naming_its_model():
    smoothed = SmoothedClassifier(three_class_model(), sigma=0.25)
    with pytest.raises(TypeError, match=r"pass smoothed\.model, and sigma=smoothed\.sigma"):
        prediction_table(smoothed, dataset())  # type: ignore[arg-type]


class FakeEstimates:
    """Replaces p_correct with given values and records each call's sizes."""

    def __init__(self, discard, weight):
        self.discard, self.weight, self.calls = discard, weight, []

    def __call__(self, model, data, sigma, num_samples, **kwargs):
        self.calls.append((len(data), num_samples))
        values = self.discard if num_samples == 100 else self.weight
        return torch.tensor(values[: len(data)], dtype=torch.float64)


def test_schedule_discards_inclusively_and_reweights_on_schedule(monkeypatch):
    fake = FakeEstimates([0.3, 0.4, 0.5, 0.39999, 1.0, 0.4], [1.0, 12 / 16, 15 / 16, 0.5])
    monkeypatch.setattr(training, "p_correct", fake)
    data = dataset(6)
    schedule = EasySampleSchedule(
        0.4, discard_epoch=2, sigma=0.5, reweight_every=3, generator=torch.Generator()
    )
    schedule.generator.manual_seed(0)
    model = three_class_model()
    orders = [list(schedule.sampler(e, model, data)) for e in range(2)]
    assert all(sorted(o) == list(range(6)) for o in orders) and orders[0] != orders[1]
    assert fake.calls == []
    assert not schedule.adversarial(1) and schedule.adversarial(2)
    epoch2 = list(schedule.sampler(2, model, data))
    assert schedule.kept.tolist() == [1, 2, 4, 5]  # p >= 0.4, inclusive
    assert fake.calls == [(6, 100), (4, 16)]
    expected = radius_weights(torch.tensor([1.0, 12 / 16, 15 / 16, 0.5], dtype=torch.float64))
    torch.testing.assert_close(schedule.weights, expected)
    assert len(epoch2) == 6 and set(epoch2) <= {1, 2, 4, 5}
    for epoch in (3, 4):
        schedule.sampler(epoch, model, data)
    assert len(fake.calls) == 2  # weights reused until the next refresh
    schedule.sampler(5, model, data)
    assert fake.calls[-1] == (4, 16) and len(fake.calls) == 3  # refreshed at 2 + 3
    state = schedule.state_dict()
    again = EasySampleSchedule(0.4, discard_epoch=2, sigma=0.5, reweight_every=3)
    again.load_state_dict(state)
    again.sampler(6, model, data)
    assert len(fake.calls) == 3  # resumed: neither discarded nor reweighted again


def test_schedule_weighted_sampling_frequencies(monkeypatch):
    monkeypatch.setattr(training, "p_correct", FakeEstimates([1.0, 1.0], [1.0, 0.5]))
    schedule = EasySampleSchedule(
        0.5, 0, sigma=0.5, epoch_size=20_000, generator=torch.Generator().manual_seed(1)
    )
    draws = torch.tensor(list(schedule.sampler(0, three_class_model(), dataset(2))))
    share = float((draws == 0).double().mean())
    w0, w1 = 1.1075, 0.1537
    assert share == pytest.approx(w0 / (w0 + w1), abs=0.01)  # with replacement, in proportion


def test_schedule_on_real_estimates_and_all_discarded():
    model = LinearTwoClass(torch.tensor([1.0, 0.0, 0.0, 0.0]), -0.5)  # class 0 iff x0 > 0.5
    x = torch.tensor([[0.9, 0, 0, 0], [0.1, 0, 0, 0], [0.8, 0, 0, 0]])
    data = TensorDataset(x, torch.zeros(3, dtype=torch.long))
    schedule = EasySampleSchedule(0.9, 0, sigma=0.05, generator=torch.Generator().manual_seed(0))
    assert sorted(set(schedule.sampler(0, model, data))) == [0, 2]
    none = EasySampleSchedule(1.0, 0, sigma=0.05)
    data = TensorDataset(x[1:2], torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold 1.0 discards every example"):
        none.sampler(0, model, data)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_catrs.py", "train_adaptive.py"])
def test_documented_training_loops_run(script, capsys):
    """The complete loops shown in the docs (examples/train_catrs.py, train_adaptive.py) run."""
    import runpy
    from pathlib import Path

    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parents[1] / "examples" / script
    with torch.random.fork_rng():
        runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "epoch 1:" in out and "certified accuracy at r = 0" in out


@settings(max_examples=30, deadline=None, database=None)
@given(st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=0, max_value=1000))
def test_any_threshold_in_the_unit_interval_and_epoch_are_accepted(threshold, epoch):
    schedule = EasySampleSchedule(threshold, epoch, sigma=0.5)
    assert schedule.threshold == threshold
    assert schedule.adversarial(epoch) and not (epoch > 0 and schedule.adversarial(epoch - 1))


@settings(max_examples=30, deadline=None, database=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20))
def test_radius_weights_are_monotone_and_bounded(values):
    p = torch.tensor(sorted(values), dtype=torch.float64)
    w = radius_weights(p)
    assert bool((w[1:] >= w[:-1]).all())
    assert float(w.min()) >= 0.1537 - 1e-4 and float(w.max()) <= 1.1075 + 1e-4
