from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from torch import nn

from rsmooth import MACERLoss
from rsmooth.functional import macer_loss, sample_noise, soft_smoothed_probs


def _softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def _reference(model, x, y, noise, sigma, lbd, gamma, beta):
    """Plain loop over inputs and copies; Phi^-1 from scipy."""
    batch = x.shape[0]
    m = noise.shape[0] // batch
    classification = robustness = 0.0
    kept = []
    for j in range(batch):
        zs = [model((x[j] + noise[i * batch + j]).unsqueeze(0))[0].tolist() for i in range(m)]
        num_classes = len(zs[0])
        f_hat = [sum(_softmax(z)[k] for z in zs) / m for k in range(num_classes)]
        g_hat = [
            sum(_softmax([beta * v for v in z])[k] for z in zs) / m for k in range(num_classes)
        ]
        classification += -math.log(f_hat[int(y[j])] + 1e-10)
        order = sorted(range(num_classes), key=lambda k: -g_hat[k])
        if order[0] != int(y[j]):
            continue
        gap = norm.ppf(g_hat[order[0]]) - norm.ppf(g_hat[order[1]])  # runner-up, not 1 - p_A
        if math.isfinite(gap) and gap <= gamma:
            robustness += sigma / 2 * (gamma - gap)
            kept.append(j)
    loss = (classification + lbd * robustness) / batch
    return loss, classification / batch, robustness / batch, kept


def _setup(dtype=torch.float64, batch=8, m=4, num_classes=4):
    torch.manual_seed(0)
    model = nn.Linear(5, num_classes).to(dtype)
    with torch.no_grad():
        model.weight.mul_(3.0)
    x = torch.rand(batch, 5, dtype=dtype)
    noise = 0.25 * torch.randn(m * batch, 5, dtype=dtype)
    return model, x, noise


def _smoothed_argmax(model, x, noise, beta):
    m = noise.shape[0] // x.shape[0]
    logits = model(x.repeat(m, 1) + noise).reshape(m, x.shape[0], -1)
    return (beta * logits).softmax(-1).mean(0).argmax(1)


@pytest.mark.parametrize("gamma", [8.0, 5.0])
def test_reference_value(gamma: float) -> None:
    model, x, noise = _setup()
    with torch.no_grad():
        y = _smoothed_argmax(model, x, noise, 16.0)
        y[:2] = (y[:2] + 1) % 4  # two misclassified inputs: no robustness term
        terms = macer_loss(model, x, y, noise, 0.25, 12.0, gamma, 16.0)
        loss, classification, robustness, kept = _reference(
            model, x, y, noise, 0.25, 12.0, gamma, 16.0
        )
    assert terms.kept.nonzero().flatten().tolist() == kept
    assert 0 < len(kept) < 6  # six correct inputs; the hinge (gap > gamma) dropped some
    assert terms.classification.item() == pytest.approx(classification, rel=1e-10)
    assert terms.robustness.item() == pytest.approx(robustness, rel=1e-9)
    assert terms.loss.item() == pytest.approx(loss, rel=1e-9)


def test_module_matches_functional_on_the_same_noise() -> None:
    model, x, _ = _setup(torch.float32)
    y = torch.arange(8) % 4
    criterion = MACERLoss(0.5, 3, 6.0, 4.0, 2.0, generator=torch.Generator().manual_seed(3))
    loss = criterion(model, x, y)
    noise = sample_noise(x, 0.5, 3, generator=torch.Generator().manual_seed(3))
    terms = macer_loss(model, x, y, noise, 0.5, 6.0, 4.0, 2.0)
    assert torch.equal(loss, terms.loss)
    assert criterion.last_terms == {
        "classification": terms.classification.item(),
        "robustness": terms.robustness.item(),
    }


def test_lbd_zero_is_cross_entropy_of_the_mean_softmax() -> None:
    model, x, noise = _setup()
    y = torch.arange(8) % 4
    terms = macer_loss(model, x, y, noise, 0.25, 0.0, 8.0, 16.0)
    probs = soft_smoothed_probs(model, x, noise)
    expected = nn.functional.nll_loss(torch.log(probs + 1e-10), y)
    assert torch.allclose(terms.loss, expected)
    assert terms.robustness.item() > 0  # still computed, for logging


def test_gradcheck() -> None:
    model, _, noise = _setup(batch=4, m=3)
    x = torch.rand(4, 5, dtype=torch.float64)
    with torch.no_grad():
        y = _smoothed_argmax(model, x, noise, 1.0)
    assert bool(macer_loss(model, x, y, noise, 0.25, 12.0, 8.0, 1.0).kept.all())
    x.requires_grad_(True)
    weight = model.weight.detach().clone().requires_grad_(True)

    def fn(inputs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def f(z: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {"weight": w, "bias": model.bias}, (z,))

        return macer_loss(f, inputs, y, noise, 0.25, 12.0, 8.0, 1.0).loss  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (x, weight))


class _TwoClass(nn.Module):
    """Logits [s, -s] with s = scale * x[:, 0]."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale * x[:, 0]
        return torch.stack([s, -s], dim=1)


def test_saturated_inputs_are_dropped_explicitly() -> None:
    model = _TwoClass()
    # beta * 2s = 320 (p_A = 1, p_B = 0), 30 (p_A = 1 in float32), 1.6 (finite gap)
    x = torch.tensor([[10.0], [0.9375], [0.05]])
    y = torch.zeros(3, dtype=torch.int64)
    noise = torch.zeros(3, 1)
    top = (16.0 * model(x)).softmax(1)
    assert top[0].tolist() == [1.0, 0.0]  # p_A = 1 and p_B = 0
    assert top[1, 0] == 1
    assert top[1, 1] > 0  # p_A = 1 with a positive runner-up

    terms = macer_loss(model, x, y, noise, 0.25, 12.0, 8.0, 16.0)
    assert terms.kept.tolist() == [False, False, True]
    p_a = torch.sigmoid(torch.tensor(1.6, dtype=torch.float64)).item()
    expected = 0.25 / 2 * (8.0 - (norm.ppf(p_a) - norm.ppf(1 - p_a))) / 3
    assert terms.robustness.item() == pytest.approx(expected, rel=1e-4)
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
    assert torch.isfinite(model.scale.grad)

    # Every input saturated: no robustness term at all, and still a finite gradient.
    model.zero_grad()
    terms = macer_loss(model, x[:2], y[:2], noise[:2], 0.25, 12.0, 8.0, 16.0)
    assert terms.kept.tolist() == [False, False]
    assert terms.robustness.item() == 0.0
    terms.loss.backward()
    assert torch.isfinite(model.scale.grad)


def test_module_finite_on_saturated_model() -> None:
    model = _TwoClass()
    with torch.no_grad():
        model.scale.fill_(1e4)
    criterion = MACERLoss(0.25, 4, generator=torch.Generator().manual_seed(0), input_range=None)
    loss = criterion(model, torch.rand(6, 1) + 0.5, torch.zeros(6, dtype=torch.int64))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(model.scale.grad)
    assert criterion.last_terms["robustness"] == 0.0


def test_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="MACER needs at least 2 classes"):
        macer_loss(
            nn.Linear(4, 1),
            torch.rand(2, 4),
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(2, 4),
            0.25,
            1.0,
            8.0,
            16.0,
        )


def test_state_restored(checks) -> None:
    checks.state_restored(lambda **kw: MACERLoss(0.25, 4, **kw))
    checks.runs_in_current_mode(lambda **kw: MACERLoss(0.25, 4, **kw))


def test_reproducible(checks) -> None:
    checks.reproducible(lambda **kw: MACERLoss(0.25, 4, **kw))


def test_shapes(checks) -> None:
    checks.shapes(lambda **kw: MACERLoss(0.25, 4, **kw))


def test_repr_and_terms() -> None:
    criterion = MACERLoss(0.25)
    assert repr(criterion) == "MACERLoss(sigma=0.25, num_noise=16, lbd=12.0, gamma=8.0, beta=16.0)"
    assert criterion.term_names == ("classification", "robustness")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be positive and finite, got 0.0"),
        ({"sigma": "a"}, TypeError, "sigma must be a real number, got str"),
        (
            {"sigma": 0.25, "num_noise": 0},
            ValueError,
            "num_noise must be a positive integer, got 0",
        ),
        ({"sigma": 0.25, "num_noise": 1.5}, TypeError, "num_noise must be an integer, got float"),
        ({"sigma": 0.25, "lbd": -1.0}, ValueError, "lbd must be non-negative and finite, got -1.0"),
        ({"sigma": 0.25, "gamma": 0.0}, ValueError, "gamma must be positive and finite, got 0.0"),
        ({"sigma": 0.25, "gamma": -8}, ValueError, "gamma must be positive and finite, got -8.0"),
        ({"sigma": 0.25, "beta": 0}, ValueError, "beta must be positive and finite, got 0.0"),
        (
            {"sigma": 0.25, "beta": float("inf")},
            ValueError,
            "beta must be positive and finite, got inf",
        ),
        ({"sigma": 0.25, "beta": None}, TypeError, "beta must be a real number, got NoneType"),
        (
            {"sigma": 0.25, "generator": 1},
            TypeError,
            "generator must be a torch.Generator, got int",
        ),
    ],
)
def test_constructor_errors(kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        MACERLoss(**kwargs)


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(max_value=0.0) | st.just(float("nan")))
def test_any_non_positive_sigma_gamma_beta_is_rejected(value: float) -> None:
    for name in ("sigma", "gamma", "beta"):
        kwargs = {"sigma": 0.25, name: value}
        with pytest.raises(ValueError, match=f"{name} must be positive"):
            MACERLoss(**kwargs)


def test_smoke_digits(checks, digits) -> None:
    # the robustness hinge (beta=16) makes the total loss noisier: ask for a 10% decrease
    checks.smoke(lambda **kw: MACERLoss(0.25, 4, **kw), digits, factor=0.9)
