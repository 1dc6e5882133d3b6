"""Tests of SmoothedClassifier.certify_radius, the sequential fixed-radius / grid certifier."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import LinearTwoClass, Spy
from scipy.stats import norm
from torch import nn

from rsmooth import ABSTAIN, SmoothedClassifier
from rsmooth._engine.sampler import Item
from rsmooth._engine.streams import input_seeds
from rsmooth.sequential import (
    CERTIFIED,
    RULED_OUT,
    UNDECIDED,
    UNREACHABLE,
    GridSchedule,
    RadiusCertificate,
    RadiusGrid,
    UnreachableRadiusWarning,
)
from rsmooth.stats import (
    radius_to_probability,
    sequential_operating_characteristic,
    sequential_thresholds,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny forward batches: one intra-op thread avoids oversubscribing a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear(sigma=0.5, batch_size=4096, model=None):
    """f(x) = class 0 iff x_0 > 0: input x has true radius x_0 (for x_0 > 0), p_A = Phi(x_0/sigma)."""
    model = model or LinearTwoClass(torch.tensor([1.0]), 0.0)
    return SmoothedClassifier(model, sigma=sigma, batch_size=batch_size, input_range=None)


def at(margins):
    return torch.tensor(margins, dtype=torch.float32)[:, None]


def run_schedule(smoothed, schedule, inputs, generator):
    """A schedule (possibly a broken one) through the engine's seam, as certify_radius runs it."""
    seeds = input_seeds(inputs.shape[0], generator)
    rows = {}
    items = (Item(j, inputs[j], seeds[j]) for j in range(inputs.shape[0]))
    smoothed.run_stream(schedule, items, rows.__setitem__, probe=inputs)
    return schedule.collect([rows[j] for j in range(inputs.shape[0])], inputs.device, given=False)


# ---------------------------------------------------------------------------- soundness
def _false_certificate_check(certified, alpha, trials):
    """The issue's criterion: certified fraction <= alpha + 3 standard errors."""
    rate = float(np.mean(certified))
    return rate, rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


@pytest.mark.slow
def test_soundness_on_the_closed_form_linear_classifier_and_an_unsound_variant_fails():
    # T inputs whose true radius m is just inside r: every certificate at r is false
    sigma, r, alpha, max_n, trials = 0.5, 0.5, 0.1, 2_000, 2_000
    smoothed = linear(sigma, batch_size=20_000)
    inputs = at([r * (1 - 1e-6)] * trials)
    g = torch.Generator().manual_seed(2024)
    cert = smoothed.certify_radius(inputs, r, alpha=alpha, max_n=max_n, generator=g)
    rate, ok = _false_certificate_check(cert.certified[:, 0].numpy(), alpha, trials)
    assert ok, rate
    # and it agrees (two-sided, 4 SE) with the exact operating characteristic
    p_true = float(norm.cdf(r * (1 - 1e-6) / sigma))
    p_star = radius_to_probability([r], sigma)
    thresholds = sequential_thresholds(cert.looks, p_star, alpha, alpha)
    oc = sequential_operating_characteristic(p_true, cert.looks, *thresholds)
    assert abs(rate - oc.certify[0]) < 4 * math.sqrt(oc.certify[0] * (1 - oc.certify[0]) / trials)
    assert oc.certify[0] < 0.8 * alpha  # Bonferroni's realized size is below alpha

    # the unsound variant: the same looks, but the full alpha at every look (no split)
    looks = cert.looks
    per_look = [sequential_thresholds((n,), p_star, alpha, alpha) for n in looks]
    cert_unsplit = np.concatenate([c for c, _ in per_look])
    fut_unsplit = np.concatenate([f for _, f in per_look])
    broken = GridSchedule(
        RadiusGrid((r,), alpha=alpha, max_n=max_n), sigma, looks, cert_unsplit, fut_unsplit, 1
    )
    unsound = run_schedule(smoothed, broken, inputs, torch.Generator().manual_seed(2024))
    rate_unsound, ok_unsound = _false_certificate_check(
        unsound.certified[:, 0].numpy(), alpha, trials
    )
    assert not ok_unsound, rate_unsound


def test_power_confident_inputs_certify_half_sigma_with_under_one_percent_of_max_n():
    sigma, max_n = 0.5, 100_000
    margins = [sigma * float(norm.ppf(p)) for p in np.linspace(0.99, 0.9999, 16)]
    g = torch.Generator().manual_seed(0)
    cert = linear(sigma).certify_radius(at(margins), 0.5 * sigma, max_n=max_n, generator=g)
    assert cert.certified.all()
    assert int(cert.num_samples.max()) < 0.01 * max_n
    assert (cert.prediction == 0).all() and (cert.radius >= 0.5 * sigma).all()


def test_certified_fraction_matches_the_operating_characteristic_above_the_threshold():
    sigma, r, alpha, max_n, trials = 0.5, 0.5, 0.1, 2_000, 400
    m = r + 0.1 * sigma
    g = torch.Generator().manual_seed(5)
    cert = linear(sigma).certify_radius(at([m] * trials), r, alpha=alpha, max_n=max_n, generator=g)
    thresholds = sequential_thresholds(cert.looks, radius_to_probability([r], sigma), alpha, alpha)
    oc = sequential_operating_characteristic(float(norm.cdf(m / sigma)), cert.looks, *thresholds)
    rate = float(cert.certified[:, 0].float().mean())
    se = math.sqrt(oc.certify[0] * (1 - oc.certify[0]) / trials)
    assert abs(rate - oc.certify[0]) < 4 * se + 1e-3
    mean_samples = float(cert.num_samples.double().mean())
    assert mean_samples == pytest.approx(oc.expected_samples, rel=0.15)


# ---------------------------------------------------------------------------- the result
def test_grid_statuses_radius_and_bounds_are_consistent():
    sigma, radii = 0.5, [0.25, 0.5, 0.75]
    # true radii: 2.0 (all certified), 0.6 (0.25 and 0.5), -0.5 (class 1 wins)
    g = torch.Generator().manual_seed(3)
    cert = linear(sigma).certify_radius(at([2.0, 0.6, -0.5]), radii, max_n=50_000, generator=g)
    assert isinstance(cert, RadiusCertificate) and len(cert) == 3
    assert cert.certified.tolist() == [
        [True, True, True],
        [True, True, False],
        [True, False, False],
    ]
    assert cert.status[1].tolist() == [CERTIFIED, CERTIFIED, RULED_OUT]
    assert cert.prediction.tolist() == [0, 0, 1]
    assert cert.candidate.tolist() == [0, 0, 1]
    for i in range(3):
        certified = [r for r, c in zip(radii, cert.certified[i].tolist(), strict=True) if c]
        assert float(cert.radius[i]) >= max(certified)
        open_radii = [r for r, c in zip(radii, cert.certified[i].tolist(), strict=True) if not c]
        assert not open_radii or float(cert.radius[i]) < min(open_radii)
        assert float(cert.p_lower[i]) <= float(cert.count[i]) / int(cert.num_samples[i])
        assert float(cert.p_upper[i]) >= float(cert.count[i]) / int(cert.num_samples[i])
    assert cert.radii == (0.25, 0.5, 0.75) and cert.looks[-1] == 50_000 == cert.max_n
    assert cert.n0 == 100 and cert.alpha == cert.beta == 0.001 and cert.sigma == sigma
    assert cert.status.dtype == torch.int8 and cert.certified.dtype == torch.bool
    assert cert.nonfinite.tolist() == [0, 0, 0]


def test_undecided_near_the_threshold_and_abstain_when_nothing_holds():
    sigma, r = 0.5, 0.5
    g = torch.Generator().manual_seed(4)
    cert = linear(sigma).certify_radius(at([r + 0.002, 0.0]), r, max_n=500, generator=g)
    assert cert.status[0].tolist() == [UNDECIDED] and int(cert.num_samples[0]) == 500
    assert int(cert.prediction[1]) == ABSTAIN and float(cert.radius[1]) == 0.0
    assert cert.abstained.tolist() == [False, True]


def test_radius_zero_is_a_sequential_prediction_test():
    g = torch.Generator().manual_seed(6)
    cert = linear(0.5).certify_radius(at([1.0, -1.0]), 0.0, max_n=1_000, generator=g)
    assert cert.certified[:, 0].tolist() == [True, True]
    assert cert.prediction.tolist() == [0, 1]
    assert int(cert.num_samples.max()) < 100


def test_candidates_test_the_given_classes_without_selection():
    spy = Spy(LinearTwoClass(torch.tensor([1.0]), 0.0))
    smoothed = linear(0.5, model=spy)
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([0, 1])  # the second input's label is wrong (class 0 wins)
    cert = smoothed.certify_radius(at([1.0, 1.0]), 0.25, candidates=labels, generator=g)
    assert cert.candidate.tolist() == [0, 1] and cert.n0 == 0
    assert cert.certified[:, 0].tolist() == [True, False]
    assert cert.status[1, 0] == RULED_OUT and int(cert.prediction[1]) == ABSTAIN
    rows = sum(batch.shape[0] for batch in spy.seen)
    assert rows == int(cert.num_samples.sum())  # no selection samples


def test_stopped_inputs_draw_no_more_samples():
    spy = Spy(LinearTwoClass(torch.tensor([1.0]), 0.0))
    smoothed = linear(0.5, batch_size=256, model=spy)
    g = torch.Generator().manual_seed(8)
    cert = smoothed.certify_radius(at([3.0, 0.51, -2.0, 0.7]), 0.5, max_n=5_000, generator=g)
    rows = sum(batch.shape[0] for batch in spy.seen)
    assert rows == int(cert.num_samples.sum()) + 4 * cert.n0
    assert len(set(cert.num_samples.tolist())) > 1  # they stopped at different looks


# ---------------------------------------------------------------------------- determinism
@pytest.mark.parametrize(
    "batch_sizes",
    [(64, 1000), pytest.param((1, 7, "auto"), marks=pytest.mark.slow)],
)
def test_bit_identical_alone_in_a_batch_and_across_batch_sizes(batch_sizes):
    margins = [3.0, 0.52, -1.0, 0.8, 0.26, 0.0]
    seeds = [11, 12, 13, 14, 15, 16]
    kwargs = {"alpha": 0.01, "max_n": 4_000}
    radii = [0.25, 0.5, 0.75]

    def gens(chosen):
        return [torch.Generator().manual_seed(seeds[i]) for i in chosen]

    batch = linear(batch_size=1000).certify_radius(
        at(margins), radii, generator=gens(range(6)), **kwargs
    )
    assert len(set(batch.num_samples.tolist())) > 2
    fields = ("prediction", "certified", "status", "radius", "p_lower", "p_upper", "count",
              "num_samples", "candidate")  # fmt: skip
    for batch_size in batch_sizes:
        smoothed = linear(batch_size=batch_size)
        for i in range(6):
            alone = smoothed.certify_radius(at([margins[i]]), radii, generator=gens([i]), **kwargs)
            for field in fields:
                assert torch.equal(getattr(alone, field)[0], getattr(batch, field)[i]), (
                    batch_size,
                    i,
                    field,
                )
    # a different seed gives different noise
    other = linear().certify_radius(
        at(margins[:2]), radii, generator=[torch.Generator().manual_seed(99)] * 2, **kwargs
    )
    assert not torch.equal(other.count, batch.count[:2])


def test_same_generator_state_gives_the_same_result():
    x = at([0.3, 0.6, 0.9])
    a = linear().certify_radius(x, [0.25, 0.5], generator=torch.Generator().manual_seed(1))
    b = linear().certify_radius(x, [0.25, 0.5], generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.count, b.count) and torch.equal(a.num_samples, b.num_samples)


def test_model_state_is_restored():
    model = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model.train()
    model[0].weight.requires_grad_(False)
    before = model[1].running_mean.clone()
    SmoothedClassifier(model, sigma=0.5, input_range=None).certify_radius(
        at([0.1, 0.2]), 0.1, max_n=500, generator=torch.Generator().manual_seed(0)
    )
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad
    assert torch.equal(model[1].running_mean, before)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("radius", "kwargs", "exc", "match"),
    [
        (-0.1, {}, ValueError, "radius must be non-negative"),
        ([0.5, 0.25], {}, ValueError, "radius must be sorted"),
        ([0.25, 0.25], {}, ValueError, "radius must be sorted"),
        ([], {}, ValueError, "at least one radius"),
        ("0.5", {}, TypeError, "radius must be"),
        (float("nan"), {}, ValueError, "radius must be finite"),
        (1.0, {"max_n": 100}, ValueError, r"max_n must be at least \d+ to certify the radius 1.0"),
        (0.5, {"growth": 1.0}, ValueError, "growth must be greater than 1, got 1.0"),
        (0.5, {"beta": 1.5}, ValueError, "beta must be in the open interval"),
        (0.5, {"alpha": 0.0}, ValueError, "alpha must be in the open interval"),
        (0.5, {"max_n": 0}, ValueError, "max_n must be a positive integer"),
        (0.5, {"n0": 0}, ValueError, "n0 must be a positive integer"),
        (0.5, {"candidates": torch.tensor([0])}, ValueError, r"candidates must have shape \[2\]"),
        (0.5, {"candidates": torch.tensor([0.0, 1.0])}, TypeError, "integer tensor"),
        (0.5, {"candidates": [0, 1]}, TypeError, "candidates must be a LongTensor"),
        (0.5, {"candidates": torch.tensor([0, -1])}, ValueError, "candidates must be classes"),
        (0.5, {"candidates": torch.tensor([0, 2])}, ValueError, r"classes in \[0, 2\), got 2"),
        (0.5, {"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_bad_arguments(radius, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        linear().certify_radius(at([0.3, 0.4]), radius, **kwargs)


def test_radii_that_max_n_cannot_reach_are_reported_unreachable_and_the_rest_certified():
    with pytest.warns(UnreachableRadiusWarning, match=r"radii \[1.0\] cannot be certified") as info:
        cert = linear().certify_radius(
            at([3.0, 0.0]), [0.25, 1.0], max_n=200, generator=torch.Generator().manual_seed(0)
        )
    assert cert.status.tolist() == [[CERTIFIED, UNREACHABLE], [RULED_OUT, UNREACHABLE]]
    assert cert.certified.tolist() == [[True, False], [False, False]]
    assert cert.reachable == (0.25,)
    needed = int(str(info[0].message).split("max_n=")[-1].split()[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = linear().certify_radius(at([3.0]), [0.25, 1.0], max_n=needed)  # reaches 1.0
    assert cert.certified.tolist() == [[True, True]]
    with pytest.warns(UnreachableRadiusWarning):
        linear().certify_radius(at([3.0]), [0.25, 1.0], max_n=needed - 1)


def test_reachability_is_checked_on_the_actual_schedule():
    # growth 2 at max_n = 21,505 gives looks (..., 21504, 21505) and a top threshold of 21,506:
    # min_sequential_max_n accepted this max_n, but 0.4 can never be certified on it
    grid = RadiusGrid((0.1, 0.2, 0.3, 0.4), alpha=0.001, max_n=21_505, growth=2)
    with pytest.warns(UnreachableRadiusWarning, match=r"radii \[0.4\]"):
        schedule = grid.bind(0.12)
    assert schedule.looks[-2:] == (21_504, 21_505) and schedule.certify[-1, -1] == 21_506
    assert schedule.reach == 3


def test_a_grid_with_no_reachable_radius_is_an_error_naming_a_max_n_that_works():
    with pytest.raises(ValueError, match=r"max_n must be at least (\d+)") as info:
        linear().certify_radius(at([0.3]), 1.0, max_n=100)
    needed = int(str(info.value).split("at least ")[1].split()[0])
    linear().certify_radius(at([3.0]), 1.0, max_n=needed)  # accepted


# ---------------------------------------------------------------------------- certify(bound=)
def test_certify_randomized_bound_uses_the_input_stream_and_is_never_below_clopper_pearson():
    from rsmooth._engine.streams import auxiliary_uniform
    from rsmooth.stats import randomized_clopper_pearson_lower

    smoothed = linear(0.5)
    x = at([0.3, 0.8, 3.0])

    def gens():
        return [torch.Generator().manual_seed(s) for s in (1, 2, 3)]

    plain = smoothed.certify(x, n=500, n0=50, alpha=0.01, generator=gens())
    randomized = smoothed.certify(x, n=500, n0=50, alpha=0.01, generator=gens(), bound="randomized")
    again = smoothed.certify(x, n=500, n0=50, alpha=0.01, generator=gens(), bound="randomized")
    assert torch.equal(plain.count, randomized.count)
    assert torch.equal(randomized.p_lower, again.p_lower)
    assert (randomized.p_lower >= plain.p_lower).all()
    assert (randomized.p_lower > plain.p_lower).any()
    seeds = input_seeds(3, gens())
    expected = randomized_clopper_pearson_lower(
        randomized.count.numpy(), 500, 0.01, auxiliary_uniform(seeds)
    )
    np.testing.assert_array_equal(randomized.p_lower.numpy(), expected)
    assert float(randomized.radius[2]) < float("inf")  # the draw is kept away from 0


def test_certify_rejects_an_unknown_bound():
    with pytest.raises(ValueError, match="bound must be 'clopper-pearson' or 'randomized'"):
        linear().certify(at([0.3]), n=100, bound="exact")


class ThreeIntervals(nn.Module):
    """Class 0 if x_0 < -a, 2 if x_0 > a, else 1: class shares are differences of Phi."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, 0]
        return torch.stack([z < -self.a, z.abs() <= self.a, z > self.a], dim=1).float()


@pytest.mark.slow
def test_a_wrong_selection_from_a_tiny_n0_does_not_certify_beyond_alpha():
    # shares 0.45 / 0.10 / 0.45: no class is the smoothed prediction with p >= 1/2, so every
    # certificate (even at radius 0) is false; n0 = 1 selects a class at random
    sigma, alpha, trials = 0.5, 0.1, 1_000
    a = sigma * float(norm.ppf(0.55))
    smoothed = SmoothedClassifier(ThreeIntervals(a), sigma=sigma, batch_size=20_000)
    g = torch.Generator().manual_seed(11)
    cert = smoothed.certify_radius(
        torch.zeros(trials, 1), 0.0, alpha=alpha, max_n=2_000, n0=1, generator=g
    )
    assert set(cert.candidate.tolist()) == {0, 1, 2}
    rate = float(cert.certified.float().mean())
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials), rate
    assert (cert.status[cert.candidate == 1] == RULED_OUT).all()


class NaNBelow(nn.Module):
    """Logits [x_0, -x_0], NaN for samples with x_0 < -1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, :1]
        logits = torch.cat([z, -z], dim=1)
        return torch.where(z < -1, torch.full_like(logits, float("nan")), logits)


def test_non_finite_samples_count_against_the_candidate():
    x = at([0.2, 3.0])
    g = torch.Generator().manual_seed(12)
    smoothed = SmoothedClassifier(
        NaNBelow(), sigma=1.0, nonfinite="count_against", input_range=None
    )
    cert = smoothed.certify_radius(x, 0.1, max_n=5_000, generator=g)
    assert int(cert.nonfinite[0]) > 0
    assert int(cert.count[0]) + int(cert.nonfinite[0]) <= int(cert.num_samples[0]) + cert.n0
    with pytest.raises(ValueError, match="non-finite"):
        SmoothedClassifier(NaNBelow(), sigma=1.0, input_range=None).certify_radius(
            x, 0.1, max_n=5_000
        )


# ---------------------------------------------------------------------------- independence
class Coin(nn.Module):
    """Class 0 iff the first coordinate is positive: at x = 0 each class has share exactly 1/2,
    so every claim that a class is the smoothed prediction is false."""

    def forward(self, x):
        score = x[:, :1]
        return torch.cat([score, -score], dim=1)


@pytest.mark.slow
def test_candidates_from_sample_counts_with_the_same_generators_are_independent_of_the_estimate():
    # The case: candidates from sample_counts, then certify_radius at radius 0 with the
    # same per-input generators. Sharing the estimation noise would certify a false claim twice
    # as often as allowed (2/32 at max_n = 5); separate streams keep it at 1/32 < alpha.
    trials, alpha = 12_000, 0.05
    smoothed = SmoothedClassifier(Coin(), 0.5, input_range=None, batch_size=4096)
    x = torch.zeros(trials, 2)

    def gens():
        return [torch.Generator().manual_seed(s) for s in range(trials)]

    candidates = smoothed.sample_counts(x, num=5, generator=gens()).argmax(1)
    cert = smoothed.certify_radius(
        x, 0.0, alpha=alpha, max_n=5, candidates=candidates, generator=gens()
    )
    rate, ok = _false_certificate_check(cert.certified[:, 0].numpy(), alpha, trials)
    assert ok, rate
    assert abs(rate - 1 / 32) < 4 * math.sqrt(1 / 32 * 31 / 32 / trials)

    # the broken variant: candidates taken from the estimation stream itself
    from rsmooth._engine.sampler import Draw
    from rsmooth._engine.streams import Stream

    class SameNoise:
        def job(self, item):
            (votes,) = yield (Draw(Stream.GRID_ESTIMATION, 0, 5),)
            return int(votes.counts.argmax())

    seeds = input_seeds(trials, gens())
    chosen = {}
    items = (Item(j, x[j], seeds[j]) for j in range(trials))
    smoothed.run_stream(SameNoise(), items, chosen.__setitem__, probe=x)
    shared = torch.tensor([chosen[j] for j in range(trials)])
    cert = smoothed.certify_radius(
        x, 0.0, alpha=alpha, max_n=5, candidates=shared, generator=gens()
    )
    rate, ok = _false_certificate_check(cert.certified[:, 0].numpy(), alpha, trials)
    assert not ok and abs(rate - 2 / 32) < 4 * math.sqrt(2 / 32 * 30 / 32 / trials), rate
