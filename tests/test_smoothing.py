"""SmoothedClassifier: soundness against closed forms, engine properties, state, errors."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import LinearTwoClass, Spy, small_cnn, small_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, norm
from torch import nn

from rsmooth import ABSTAIN, Certificate, SampleSizeWarning, SmoothedClassifier
from rsmooth.stats import (
    certified_radius,
    certify_from_counts,
    clopper_pearson_lower,
    max_certified_radius,
    predict_from_counts,
)


class Constant(nn.Module):
    """Always votes for one class."""

    def __init__(self, cls: int, num_classes: int = 4) -> None:
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)
        out[:, self.cls] = 1.0
        return out


def linear_case(margin: float, sigma: float, dim: int = 3):
    """A two-class linear classifier and a point whose true radius is `margin`."""
    w = torch.tensor([3.0, -4.0, 0.0][:dim])  # ||w|| = 5
    model = LinearTwoClass(w, bias=0.5)
    # choose x with w.x + b = 5 * margin  ->  distance to the hyperplane = margin
    x = torch.zeros(dim)
    x[0] = (5 * margin - 0.5) / 3.0
    p_a = norm.cdf(margin / sigma)
    return model, x, p_a


# ---------------------------------------------------------------- soundness
@pytest.mark.parametrize(("margin", "sigma"), [(0.3, 0.5), (0.05, 0.25), (1.0, 1.0)])
def test_certify_is_sound_and_unbiased_on_linear_classifier(margin, sigma):
    """Over many seeded trials the certified radius exceeds the true radius in <= alpha of them.

    For f(x) = [w.x + b > 0], P(f(x + delta) = A) = Phi(|w.x + b| / (sigma ||w||)) exactly and
    the smoothed classifier's true robust radius is |w.x + b| / ||w|| (the distance to the
    hyperplane). Each row of the batch is an independent trial with its own noise stream.
    """
    trials, n, n0, alpha = 4000, 300, 10, 0.05
    model, x, p_a = linear_case(margin, sigma)
    smoothed = SmoothedClassifier(model, sigma, batch_size=4096, input_range=None)
    g = torch.Generator().manual_seed(20260)
    cert = smoothed.certify(x.expand(trials, -1).clone(), n=n, n0=n0, alpha=alpha, generator=g)

    # 1. soundness: a wrong class, or a radius beyond the truth, happens w.p. <= alpha per trial
    wrong = (cert.prediction == 1) | ((cert.prediction == 0) & (cert.radius > margin))
    violations = int(wrong.sum())
    limit = binom.ppf(1 - 1e-6, trials, alpha)  # false-failure probability 1e-6
    assert violations <= limit, (violations, limit)

    # 2. the mean radius matches its exact expectation under the Clopper-Pearson bound
    k = np.arange(n + 1)
    radius_k = np.where(
        clopper_pearson_lower(k, n, alpha) >= 0.5,
        certified_radius(clopper_pearson_lower(k, n, alpha), sigma),
        0.0,
    )
    k0 = np.arange(n0 + 1)
    p_select_a = binom.pmf(k0, n0, p_a)[k0 >= n0 - k0].sum()  # ties go to class 0 = A
    mean_a = (binom.pmf(k, n, p_a) * radius_k).sum()
    mean_b = (binom.pmf(k, n, 1 - p_a) * radius_k).sum()
    expected = p_select_a * mean_a + (1 - p_select_a) * mean_b
    second = (
        p_select_a * (binom.pmf(k, n, p_a) * radius_k**2).sum()
        + (1 - p_select_a) * (binom.pmf(k, n, 1 - p_a) * radius_k**2).sum()
    )
    std_error = math.sqrt(max(second - expected**2, 0.0) / trials)
    assert float(cert.radius.mean()) == pytest.approx(expected, abs=5 * std_error + 1e-9)


def test_point_estimate_would_fail_soundness():
    """The soundness check above can fail: a radius from the point estimate violates it."""
    trials, n, alpha, sigma, margin = 2000, 300, 0.05, 0.5, 0.3
    model, x, _ = linear_case(margin, sigma)
    smoothed = SmoothedClassifier(model, sigma, batch_size=4096)
    counts = smoothed.sample_counts(
        x.expand(trials, -1).clone(), num=n, generator=torch.Generator().manual_seed(1)
    )
    naive = sigma * norm.ppf(np.clip(counts[:, 0].numpy() / n, 0, 1 - 1e-12))
    violations = int((naive > margin).sum())
    assert violations > binom.ppf(1 - 1e-6, trials, alpha)


def test_counts_match_closed_form_probability():
    sigma, margin, trials, n = 0.5, 0.2, 200, 500
    model, x, p_a = linear_case(margin, sigma)
    smoothed = SmoothedClassifier(model, sigma, batch_size=1000)
    counts = smoothed.sample_counts(
        x.expand(trials, -1).clone(), num=n, generator=torch.Generator().manual_seed(3)
    )
    assert counts.shape == (trials, 2)
    assert bool((counts.sum(1) == n).all())
    total = trials * n
    assert float(counts[:, 0].sum()) / total == pytest.approx(
        p_a, abs=5 * math.sqrt(p_a * (1 - p_a) / total)
    )


def test_radius_is_capped_and_abstains_on_the_boundary():
    model = Constant(2)
    smoothed = SmoothedClassifier(model, 0.5, input_range=None)
    cert = smoothed.certify(torch.zeros(3, 5), n=1000, n0=10, alpha=0.001)
    assert cert.prediction.tolist() == [2, 2, 2]
    assert torch.allclose(
        cert.radius, torch.full((3,), max_certified_radius(1000, 0.001, 0.5), dtype=torch.float64)
    )
    assert cert.count.tolist() == [1000] * 3
    # a point on the decision boundary: p_A = 1/2 -> abstains (with prob >= 1 - alpha)
    lin, _, _ = linear_case(0.0, 1.0)
    x = torch.tensor([[-0.5 / 3.0, 0.0, 0.0]]).expand(50, -1).clone()
    cert = SmoothedClassifier(lin, 1.0, input_range=None).certify(
        x, n=2000, n0=20, alpha=0.001, generator=torch.Generator().manual_seed(0)
    )
    assert bool(cert.abstained.all())
    assert bool((cert.radius == 0).all())
    assert bool((cert.prediction == ABSTAIN).all())


# ---------------------------------------------------------------- algorithm details
class FirstRowsVoteOne(nn.Module):
    """Votes class 1 for the first `k` rows it ever sees, class 0 afterwards."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.seen = k, 0

    def forward(self, x):
        out = torch.zeros(x.shape[0], 2)
        idx = torch.arange(self.seen, self.seen + x.shape[0])
        out[idx < self.k, 1] = 1.0
        out[idx >= self.k, 0] = 1.0
        self.seen += x.shape[0]
        return out


def test_selection_and_estimation_draws_are_independent():
    # the n0 selection draws all vote 1; the n estimation draws all vote 0:
    # candidate 1 gets zero estimation votes -> abstain. Reusing selection draws would not.
    model = FirstRowsVoteOne(k=20)
    cert = SmoothedClassifier(model, 1.0, batch_size=100).certify(torch.zeros(1, 2), n=500, n0=20)
    assert model.seen == 520
    assert cert.count.tolist() == [0]
    assert cert.prediction.tolist() == [ABSTAIN]


def test_selection_ties_go_to_the_lowest_class():
    # CERTIFY is pure over counts: the candidate of a tie is the lowest class
    out = certify_from_counts([[0, 5, 5]], [[0, 100, 0]], 100, 0.001, 1.0)
    assert out.prediction.tolist() == [1]
    assert float(out.p_lower[0]) == pytest.approx(float(clopper_pearson_lower(100, 100, 0.001)))


@pytest.mark.parametrize(
    ("counts", "expected"),
    [((510, 490), ABSTAIN), ((600, 400), 0), ((50, 50), ABSTAIN), ((0, 20), 1)],
)
def test_predict_uses_the_two_sided_test(counts, expected):
    table = [[counts[0], counts[1], 0]]
    assert predict_from_counts(table, 0.001).tolist() == [expected]


def test_predict_on_linear_classifier():
    model, x, _ = linear_case(0.8, 0.5)
    x2 = torch.stack([x, -x + torch.tensor([-0.5 / 3 * 2, 0, 0])])  # mirrored point is class 1
    smoothed = SmoothedClassifier(model, 0.5, input_range=None)
    pred = smoothed.predict(x2, n=500, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert pred.tolist() == [0, 1]


def test_predict_abstains_on_the_boundary():
    lin, _, _ = linear_case(0.0, 1.0)
    x = torch.tensor([[-0.5 / 3.0, 0.0, 0.0]]).expand(40, -1).clone()
    pred = SmoothedClassifier(lin, 1.0, input_range=None).predict(
        x, n=1000, generator=torch.Generator().manual_seed(2)
    )
    assert bool((pred == ABSTAIN).all())


# ---------------------------------------------------------------- engine
def test_forward_batches_are_bounded_and_filled_across_inputs():
    rec = Spy(small_mlp(4, 3))
    smoothed = SmoothedClassifier(rec, 0.5, batch_size=64)
    counts = smoothed.sample_counts(torch.rand(10, 4), num=16)
    sizes = [b.shape[0] for b in rec.seen]
    assert max(sizes) <= 64
    assert sizes == [64, 64, 32]  # 4 inputs x 16 samples per forward
    assert bool((counts.sum(1) == 16).all())
    rec.seen.clear()
    smoothed.sample_counts(torch.rand(1, 4), num=1000)
    assert max(b.shape[0] for b in rec.seen) == 64
    assert sum(b.shape[0] for b in rec.seen) == 1000


def test_noise_is_centred_on_each_input_and_has_scale_sigma():
    rec = Spy(small_mlp(2, 3))
    smoothed = SmoothedClassifier(rec, 0.3, batch_size=500, input_range=None)
    x = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    smoothed.sample_counts(x, num=2000, generator=torch.Generator().manual_seed(0))
    rows = torch.cat(rec.seen)
    first, second = rows[(rows[:, 0] > 0)], rows[(rows[:, 0] < 0)]
    assert first.shape[0] == second.shape[0] == 2000
    assert torch.allclose(first.mean(0), x[0], atol=0.05)
    assert torch.allclose(first.std(0), torch.full((2,), 0.3), atol=0.02)


def test_generator_reproducibility_and_independence_from_other_inputs():
    torch.manual_seed(1)  # test-only: weights whose votes spread, so that the noise shows
    model = small_cnn()
    smoothed = SmoothedClassifier(model, 0.25, batch_size=100)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = smoothed.certify(x, n=300, n0=30, generator=torch.Generator().manual_seed(7))
    b = smoothed.certify(x, n=300, n0=30, generator=torch.Generator().manual_seed(7))
    c = smoothed.certify(x, n=300, n0=30, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.count, b.count) and torch.equal(a.radius, b.radius)
    assert not torch.equal(a.count, c.count)
    # with per-input generators, input j's result does not depend on the other inputs
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    full = smoothed.certify(x, n=300, n0=30, generator=gens([11, 12, 13, 14, 15]))
    alone = smoothed.certify(x[3:4], n=300, n0=30, generator=gens([14]))
    assert full.count[3] == alone.count[0]


@pytest.mark.parametrize("shape", [(6,), (1, 8, 8), (2, 3, 2, 2)])
def test_any_input_shape(shape):
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 3))
    smoothed = SmoothedClassifier(model, 0.5, batch_size=50)
    x = torch.rand((4,) + shape)
    cert = smoothed.certify(x, n=100, n0=10, generator=torch.Generator().manual_seed(0))
    assert cert.prediction.shape == cert.radius.shape == cert.p_lower.shape == (4,)
    assert smoothed.predict(x, n=100).shape == (4,)
    assert smoothed.soft_predict(x, num_noise=3).shape == (4, 3)


def test_dtype_and_device_follow_the_inputs(device):
    model = small_mlp(4, 3).double().to(device)
    rec = Spy(model)
    smoothed = SmoothedClassifier(rec, 0.5)
    x = torch.rand(3, 4, dtype=torch.float64, device=device)
    cert = smoothed.certify(x, n=50, n0=5, generator=torch.Generator(device).manual_seed(0))
    assert rec.seen[0].dtype == torch.float64 and rec.seen[0].device == x.device
    assert cert.prediction.device == x.device and cert.radius.dtype == torch.float64


def test_soft_predict_is_differentiable_and_restores_mode():
    model = small_cnn()
    model.train()
    smoothed = SmoothedClassifier(model, 0.25)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    probs = smoothed.soft_predict(x, num_noise=4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(probs.sum(1), torch.ones(2))
    probs[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert model.training


# ---------------------------------------------------------------- model state
def mixed_model():
    model = small_cnn()
    model.train()
    model[1].eval()  # BatchNorm in eval, the rest in train
    model[0].weight.requires_grad_(False)
    return model


def state_of(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_model_state_is_restored_after_success():
    model = mixed_model()
    before = state_of(model)
    bn_stats = model[1].running_mean.clone()
    smoothed = SmoothedClassifier(model, 0.5, batch_size=64)
    smoothed.certify(torch.rand(3, 1, 8, 8), n=100, n0=10)
    smoothed.predict(torch.rand(3, 1, 8, 8), n=100)
    assert state_of(model) == before
    assert torch.equal(model[1].running_mean, bn_stats)  # eval mode: no BatchNorm updates
    assert all(p.grad is None for p in model.parameters())


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = mixed_model()

    def forward(self, x):
        self.inner(x)
        raise RuntimeError("boom")


def test_model_state_is_restored_after_an_exception():
    model = Exploding()
    before = state_of(model)
    smoothed = SmoothedClassifier(model, 0.5)
    with pytest.raises(RuntimeError, match="boom"):
        smoothed.certify(torch.rand(2, 1, 8, 8), n=20, n0=5)
    with pytest.raises(RuntimeError, match="boom"):
        smoothed.soft_predict(torch.rand(2, 1, 8, 8))
    assert state_of(model) == before


# ---------------------------------------------------------------- warnings
def test_sample_size_warnings():
    smoothed = SmoothedClassifier(Constant(1), 0.5)
    with pytest.warns(SampleSizeWarning, match="at least n=11"):
        pred = smoothed.predict(torch.zeros(2, 3), n=10, alpha=0.001)
    assert pred.tolist() == [ABSTAIN, ABSTAIN]
    with pytest.warns(SampleSizeWarning, match="at least n=10"):
        cert = smoothed.certify(torch.zeros(2, 3), n=9, n0=5, alpha=0.001)
    assert cert.prediction.tolist() == [ABSTAIN, ABSTAIN]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert smoothed.predict(torch.zeros(1, 3), n=11, alpha=0.001).tolist() == [1]
        assert smoothed.certify(torch.zeros(1, 3), n=10, n0=5, alpha=0.001).prediction.tolist() == [
            1
        ]


# ---------------------------------------------------------------- errors
GOOD = SmoothedClassifier(Constant(0), 0.5)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: SmoothedClassifier(lambda x: x, 0.5),
            TypeError,
            "model must be a torch.nn.Module",
        ),
        (
            lambda: SmoothedClassifier(Constant(0), 0.0),
            ValueError,
            "sigma must be positive and finite, got 0.0",
        ),
        (lambda: SmoothedClassifier(Constant(0), -1), ValueError, "sigma must be positive"),
        (lambda: SmoothedClassifier(Constant(0), math.inf), ValueError, "sigma must be positive"),
        (lambda: SmoothedClassifier(Constant(0), math.nan), ValueError, "sigma must be positive"),
        (
            lambda: SmoothedClassifier(Constant(0), "0.5"),
            TypeError,
            "sigma must be a real number, got str",
        ),
        (
            lambda: SmoothedClassifier(Constant(0), 0.5, batch_size=0),
            ValueError,
            "batch_size must be a positive integer, got 0",
        ),
        (
            lambda: SmoothedClassifier(Constant(0), 0.5, batch_size=2.5),
            TypeError,
            "batch_size must be an integer, 'auto' or None, got float",
        ),
        (
            lambda: SmoothedClassifier(Constant(0), 0.5, num_classes=1),
            ValueError,
            "num_classes must be an integer >= 2, got 1",
        ),
        (
            lambda: GOOD.certify(torch.zeros(2, 3), n=0),
            ValueError,
            "n must be a positive integer, got 0",
        ),
        (
            lambda: GOOD.certify(torch.zeros(2, 3), n=100, n0=0),
            ValueError,
            "n0 must be a positive integer, got 0",
        ),
        (
            lambda: GOOD.certify(torch.zeros(2, 3), n=True),
            TypeError,
            "n must be an integer, got bool",
        ),
        (
            lambda: GOOD.certify(torch.zeros(2, 3), alpha=0.0),
            ValueError,
            r"alpha must be in the open interval \(0, 1\), got 0.0",
        ),
        (
            lambda: GOOD.predict(torch.zeros(2, 3), alpha=1.0),
            ValueError,
            "alpha must be in the open interval",
        ),
        (lambda: GOOD.certify(torch.zeros(0, 3)), ValueError, "inputs must be a non-empty batch"),
        (
            lambda: GOOD.certify(torch.zeros(2, 3, dtype=torch.long)),
            TypeError,
            "inputs must be a floating-point tensor",
        ),
        (lambda: GOOD.certify(torch.tensor(1.0)), ValueError, "0-d tensor"),
        (lambda: GOOD.certify([[0.0]]), TypeError, "inputs must be a torch.Tensor, got list"),
        (lambda: GOOD.certify(torch.tensor([[0.0, math.nan]])), ValueError, "NaN or inf"),
        (lambda: GOOD.predict(torch.tensor([[0.0, math.inf]])), ValueError, "NaN or inf"),
        (
            lambda: GOOD.certify(torch.zeros(2, 3), generator=0),
            TypeError,
            "generator must be a torch.Generator, got int",
        ),
        (
            lambda: GOOD.soft_predict(torch.zeros(2, 3), num_noise=0),
            ValueError,
            "num_noise must be a positive integer",
        ),
        (
            lambda: GOOD.sample_counts(torch.zeros(2, 3), num=0),
            ValueError,
            "num must be a positive integer",
        ),
        (
            lambda: SmoothedClassifier(Constant(0, 4), 0.5, num_classes=3).certify(
                torch.zeros(1, 2), n=20
            ),
            ValueError,
            "num_classes is 3 but the model returned 4",
        ),
        (
            lambda: SmoothedClassifier(nn.Identity(), 0.5).certify(torch.zeros(2, 3, 4), n=20),
            ValueError,
            "logits of shape",
        ),
        (
            lambda: SmoothedClassifier(Constant(0, 1), 0.5).certify(torch.zeros(2, 3), n=20),
            ValueError,
            "at least 2 logits",
        ),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_generator_on_wrong_device():
    # the check itself needs no CUDA device: inputs on "cuda" with a CPU generator
    from rsmooth._validation import check_generator

    with pytest.raises(ValueError, match="torch.Generator\\(device=inputs.device\\)"):
        check_generator(torch.Generator(), torch.device("cuda"))
    if torch.cuda.is_available():  # and end to end where there is one
        with pytest.raises(ValueError, match="torch.Generator\\(device=inputs.device\\)"):
            GOOD.certify(torch.zeros(2, 3, device="cuda"), generator=torch.Generator())


@settings(max_examples=30, deadline=None)
@given(st.floats(max_value=0.0, allow_nan=False) | st.just(math.nan) | st.just(math.inf))
def test_any_non_positive_or_non_finite_sigma_is_rejected(sigma):
    with pytest.raises(ValueError, match="sigma"):
        SmoothedClassifier(Constant(0), sigma)


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1 - 1e-9))
def test_any_alpha_in_open_unit_interval_is_accepted(alpha):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)
        cert = GOOD.certify(torch.zeros(1, 2), n=20, n0=2, alpha=alpha)
    assert isinstance(cert, Certificate)
    assert float(cert.radius[0]) <= max_certified_radius(20, alpha, 0.5) + 1e-12


@settings(max_examples=20, deadline=None)
@given(
    st.integers(min_value=1, max_value=7),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=1, max_value=128),
)
def test_counts_always_sum_to_num(batch, num, batch_size):
    smoothed = SmoothedClassifier(nn.Linear(2, 3), 0.5, batch_size=batch_size)
    counts = smoothed.sample_counts(
        torch.rand(batch, 2), num=num, generator=torch.Generator().manual_seed(0)
    )
    assert counts.shape == (batch, 3)
    assert bool((counts.sum(1) == num).all())


def test_one_generator_per_input_is_public_and_matches_a_single_input_call():
    smoothed = SmoothedClassifier(small_cnn(), 0.25, batch_size=128)
    x = torch.rand(4, 1, 8, 8)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    batch = smoothed.certify(x, n=200, n0=20, generator=gens([1, 2, 3, 4]))
    single = smoothed.certify(x[2:3], n=200, n0=20, generator=gens([3]))
    assert batch.count[2] == single.count[0]
    counts = smoothed.sample_counts(x, num=100, generator=tuple(gens([5, 6, 7, 8])))
    assert torch.equal(counts[1:2], smoothed.sample_counts(x[1:2], num=100, generator=gens([6])))


@pytest.mark.parametrize(
    ("generator", "exc", "match"),
    [
        ([torch.Generator()], ValueError, "a sequence of length 1 for 2 inputs"),
        ([torch.Generator(), 3], TypeError, "generator must be a torch.Generator, got int"),
        ([torch.Generator(), None], TypeError, "must not contain None"),
    ],
)
def test_per_input_generator_errors(generator, exc, match):
    with pytest.raises(exc, match=match):
        GOOD.certify(torch.zeros(2, 3), n=20, generator=generator)
    with pytest.raises(exc, match=match):
        GOOD.soft_predict(torch.zeros(2, 3), generator=generator)


def test_soft_predict_takes_one_generator_per_input():
    smoothed = SmoothedClassifier(small_cnn(), 0.25, batch_size=128)
    x = torch.rand(3, 1, 8, 8)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    batch = smoothed.soft_predict(x, num_noise=4, generator=gens([1, 2, 3]))
    single = smoothed.soft_predict(x[1:2], num_noise=4, generator=gens([2]))
    torch.testing.assert_close(batch[1:2], single)


def test_exported_programs_can_be_smoothed():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    exported = torch.export.export(
        model, (torch.rand(2, 1, 2, 2),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    ).module()
    cert = SmoothedClassifier(exported, 0.5, batch_size=64).certify(
        torch.rand(3, 1, 2, 2), n=100, n0=10
    )
    assert cert.prediction.shape == (3,)


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("name", "value", "exc", "match"),
    [
        ("sigma", -1.0, ValueError, "sigma must be positive"),
        ("sigma", "big", TypeError, "sigma must be a real number"),
        ("num_classes", 1, ValueError, "num_classes must be an integer >= 2, got 1"),
        ("batch_size", 0, ValueError, "batch_size must be a positive integer, got 0"),
        ("batch_size", "fast", ValueError, "batch_size must be .*'auto' or None, got 'fast'"),
        ("batch_size", 2.5, TypeError, "batch_size must be an integer, 'auto' or None, got float"),
        (
            "nonfinite",
            "ignore",
            ValueError,
            "nonfinite must be 'raise' or 'count_against', got 'ignore'",
        ),
        ("compile", "yes", TypeError, "compile must be a bool or a dict"),
        ("compile", {"dynamic": True}, ValueError, "compile must not set 'dynamic'"),
        ("autocast", torch.int8, ValueError, "autocast must be torch.bfloat16 or"),
        ("autocast", "bf16", TypeError, "autocast must be a torch.dtype or None, got str"),
        ("input_range", (1.0, 0.0), ValueError, r"input_range must be a pair .* got \(1.0, 0.0\)"),
        ("memory_format", "nhwc", ValueError, "memory_format must be one of .*, got 'nhwc'"),
        ("memory_format", None, TypeError, "memory_format must be one of .*, got NoneType"),
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


class ViewsItsInput(nn.Module):
    """Flattens with ``view``, which a channels_last batch refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 4)

    def forward(self, x):
        return self.linear(x.view(x.shape[0], -1))


def test_assigning_another_model_drops_the_choices_made_for_the_old_one():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 4))
    smoothed = SmoothedClassifier(cnn, 0.5)
    smoothed.sample_counts(x, num=50)
    assert "channels_last" in repr(smoothed)
    smoothed.model = ViewsItsInput()  # cannot take the channels_last batches chosen for the CNN
    assert "channels_last" not in repr(smoothed)
    counts = smoothed.sample_counts(x, num=300, generator=torch.Generator().manual_seed(1))
    plain = SmoothedClassifier(ViewsItsInput(), 0.5)
    plain.model.load_state_dict(smoothed.model.state_dict())
    assert torch.equal(
        counts, plain.sample_counts(x, num=300, generator=torch.Generator().manual_seed(1))
    )


def test_assigning_a_model_or_compile_compiles_what_is_assigned(monkeypatch):
    compiled = []

    def fake_compile(model, **options):  # records what would be compiled; runs it eagerly
        compiled.append((model, options))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    first, second = nn.Linear(2, 3), nn.Linear(2, 3)
    smoothed = SmoothedClassifier(first, 0.5, compile=True, input_range=None)
    smoothed.model = second
    smoothed.compile = {"mode": "max-autotune"}
    smoothed.compile = False
    assert compiled == [(first, {"dynamic": False}), (second, {"dynamic": False})] + [
        (second, {"dynamic": False, "mode": "max-autotune"})
    ]


def test_a_setting_whose_compile_fails_changes_nothing(monkeypatch):
    def fake_compile(model, **options):
        if options.get("mode") == "bogus" or isinstance(model, nn.Bilinear):
            raise RuntimeError("cannot compile")
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    first = nn.Linear(2, 3)
    smoothed = SmoothedClassifier(first, 0.5, compile=True, input_range=None)
    with pytest.raises(RuntimeError, match="cannot compile"):
        smoothed.compile = {"mode": "bogus"}
    with pytest.raises(RuntimeError, match="cannot compile"):
        smoothed.model = nn.Bilinear(2, 2, 3)
    assert smoothed.model is first and smoothed.compile is True


def test_the_default_batch_size_is_fixed_per_device_and_shown_once_used():
    spy = Spy(nn.Linear(3, 2))
    smoothed = SmoothedClassifier(spy, 0.5)
    assert smoothed.batch_size is None and "batch_size=None)" in repr(smoothed)
    smoothed.sample_counts(torch.zeros(3, 3), num=300)
    assert [b.shape[0] for b in spy.seen] == [128] * 7 + [4]  # whatever the machine's load
    assert "batch_size=None (device default: 128 for [3] float32 on cpu)" in repr(smoothed)


def test_the_timed_search_is_an_opt_in_with_the_same_counts():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = small_cnn().eval()
    auto = SmoothedClassifier(model, 0.5, batch_size="auto")
    fixed = SmoothedClassifier(model, 0.5, batch_size=97)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    counts = auto.sample_counts(x, num=5000, generator=gens())
    assert torch.equal(counts, fixed.sample_counts(x, num=5000, generator=gens()))
    assert "batch_size='auto'" in repr(auto)


def test_a_model_with_a_side_effect_sees_every_noisy_row_at_the_defaults():
    rows = []

    class Records(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.linear = nn.Linear(2 * 6 * 6, 3)

        def forward(self, x):
            rows.append(x.detach().clone())
            return self.linear(self.conv(x).flatten(1))

    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    SmoothedClassifier(Records(), 0.5).certify(x, n=300, n0=20)
    seen = torch.cat(rows)
    clean = (seen.flatten(1)[:, None, :] == x.flatten(1)[None]).all(-1).any(-1)
    assert int(clean.sum()) == 4  # the layout check: the two clean inputs in both layouts
    assert int((~clean).sum()) == 2 * (300 + 20)  # every noisy row went through forward
