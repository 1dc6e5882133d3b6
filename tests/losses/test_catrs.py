"""Tests of rsmooth.CATRSLoss and rsmooth.functional.catrs_loss / catrs_noise_attack."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import CATRSLoss, CATRSNoiseAttack, GaussianAugmentationLoss
from rsmooth.functional import (
    catrs_loss,
    catrs_noise_attack,
    gaussian_augmentation_loss,
    sample_noise,
)
from tests.conftest import Mixed, small_mlp


def plain_mlp(dtype=torch.float64):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def soft_prior(targets, num_classes, dtype=torch.float32):
    """A prior that mostly agrees with the label (a stand-in for a Gaussian model's table)."""
    return 0.9 * F.one_hot(targets, num_classes).to(dtype) + 0.1 / num_classes


# --- the official step written as plain loops over examples and copies ----------------------------


def reference_attack(model, x, prior, noise, eps, steps):
    """KL_PGD one row at a time: each row's gradient only depends on that row."""
    b, m = x.shape[0], noise.shape[0] // x.shape[0]
    out = []
    for r in range(m * b):
        j = r % b
        n0 = noise[r].clone()
        n = n0.clone()
        mu0, rho0 = n0.mean(), n0.pow(2).mean().sqrt()
        for _ in range(steps):
            n = n.detach().requires_grad_(True)
            log_q = torch.log_softmax(model((x[j] + n)[None])[0], 0)
            kl = sum(
                prior[j, k] * (torch.log(prior[j, k]) - log_q[k])
                for k in range(prior.shape[1])
                if prior[j, k] > 0
            )
            (g,) = torch.autograd.grad(kl / m, n)
            with torch.no_grad():
                n = n + (2 * eps / steps) * g / (g.norm() + 1e-8)
                eta = n - n0
                if eta.norm() > eps:
                    eta = eta * (eps / (eta.norm() + 1e-7))
                assert float(eta.norm()) <= eps + 1e-12  # the ball, before re-standardisation
                n = n0 + eta
                n = mu0 + (n - n.mean()) * rho0 / n.pow(2).mean().sqrt()
        out.append(n.detach())
    return torch.stack(out)


def reference_loss(model, x, y, prior, noise, adv, uniforms, lbd, confidence="model"):
    b, m = x.shape[0], noise.shape[0] // x.shape[0]
    total, ks = 0.0, []
    for j in range(b):
        ces, hits = [], 0
        for i in range(m):
            z = model((x[j] + noise[i * b + j])[None])[0]
            ces.append(-torch.log_softmax(z, 0)[y[j]])
            hits += int(int(z.argmax()) == int(y[j]))
        w = hits / m if confidence == "model" else float(prior[j, y[j]])
        k = max(1, sum(1 for i in range(m) if float(uniforms[j, i]) < w))
        ks.append(k)
        low = sum(sorted(ces, key=lambda v: float(v.detach()))[:k]) / m
        kls = []
        for i in range(m):
            log_q = torch.log_softmax(model((x[j] + adv[i * b + j])[None])[0], 0)
            kls.append(
                sum(
                    prior[j, c] * (torch.log(prior[j, c]) - log_q[c])
                    for c in range(prior.shape[1])
                    if prior[j, c] > 0
                )
            )
        high = max(kls, key=lambda v: float(v.detach()))
        total = total + low + (lbd * high if k == m else 0.0)
    return total / b, ks


def example_batch(seed=0, b=6, m=4):
    g = torch.Generator().manual_seed(seed)
    model = plain_mlp()
    x = torch.rand(b, 6, generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(m * b, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():  # labels = majority vote, so that some examples are confident
        votes = model(x.repeat(m, 1) + noise).argmax(1).reshape(m, b)
        y = votes.mode(0).values
    y[-1] = (y[-1] + 1) % 3  # and one that is not
    prior = torch.softmax(torch.randn(b, 3, generator=g, dtype=torch.float64), 1)
    prior[0] = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)  # exact zeros: 0 log 0 = 0
    uniforms = torch.rand(b, m, generator=g, dtype=torch.float64)
    uniforms[: b // 2] = 0.0  # K = m wherever w > 0
    return model, x, y, prior, noise, uniforms


def test_attack_matches_reference_loop():
    model, x, _, prior, noise, _ = example_batch()
    adv = catrs_noise_attack(model, x, prior, noise, epsilon=0.4, num_steps=3)
    torch.testing.assert_close(adv, reference_attack(model, x, prior, noise, 0.4, 3))
    assert not torch.allclose(adv, noise)


@pytest.mark.parametrize("confidence", ["model", "prior"])
def test_loss_and_gradients_match_reference_loop(confidence):
    model, x, y, prior, noise, uniforms = example_batch()
    terms = catrs_loss(model, x, y, prior, noise, uniforms, 0.4, 3, 1.5, confidence=confidence)
    adv = reference_attack(model, x, prior, noise, 0.4, 3)
    expected, ks = reference_loss(model, x, y, prior, noise, adv, uniforms, 1.5, confidence)
    torch.testing.assert_close(terms.loss, expected)
    assert terms.k.tolist() == ks
    assert 4 in ks and min(ks) < 4  # both branches are exercised
    assert float(terms.accept_rate) == pytest.approx(ks.count(4) / len(ks))
    assert float(terms.mean_k) == pytest.approx(sum(ks) / len(ks))
    torch.testing.assert_close(terms.loss, terms.low + 1.5 * terms.high)
    got = torch.autograd.grad(terms.loss, list(model.parameters()))
    want = torch.autograd.grad(expected, list(model.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_attack_keeps_row_means_and_moves_every_row():
    model, x, _, prior, noise, _ = example_batch(1)
    adv = catrs_noise_attack(model, x, prior, noise, epsilon=2.0, num_steps=4)
    torch.testing.assert_close(adv.mean(1), noise.mean(1), rtol=0, atol=1e-12)
    assert bool(((adv - noise).norm(dim=1) > 0).all())
    assert catrs_noise_attack(model, x, prior, noise, 1.0, 0) is not noise
    assert torch.equal(catrs_noise_attack(model, x, prior, noise, 1.0, 0), noise)


def test_attack_4d_keeps_means():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(3, 1, 4, 4, generator=g)
    noise = 0.5 * torch.randn(6, 1, 4, 4, generator=g)
    adv = catrs_noise_attack(model, x, torch.full((3, 3), 1 / 3), noise, 1.0, 2)
    assert adv.shape == noise.shape
    torch.testing.assert_close(adv.mean((1, 2, 3)), noise.mean((1, 2, 3)), rtol=0, atol=1e-6)


def test_lambda_zero_and_k_equal_m_is_gaussian_augmentation():
    """§C: with lambda = 0 and K = m (prior = one-hot(y), confidence 'prior') it is m-copy CE."""
    model, x, y, _, noise, uniforms = example_batch()
    prior = F.one_hot(y, 3).double()
    terms = catrs_loss(model, x, y, prior, noise, uniforms, 1.0, 2, 0.0, confidence="prior")
    assert terms.k.tolist() == [4] * 6
    torch.testing.assert_close(terms.loss, gaussian_augmentation_loss(model, x, y, noise).loss)


def test_module_lambda_zero_equals_gaussian_module():
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
    model = plain_mlp(torch.float32)
    prior = F.one_hot(y, 3).float()
    catrs = CATRSLoss(0.5, 1.0, 2, 3, 0.0, confidence="prior", generator=torch.Generator())
    gauss = GaussianAugmentationLoss(0.5, 3, generator=torch.Generator())
    catrs.generator.manual_seed(3)
    gauss.generator.manual_seed(3)
    torch.testing.assert_close(catrs(model, x, y, prior=prior), gauss(model, x, y))


def test_module_matches_functional_with_documented_draw_order():
    model = small_mlp(6, 3).train()
    ref = small_mlp(6, 3)
    ref.load_state_dict(model.state_dict())
    x, y = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])
    prior = soft_prior(y, 3)
    crit = CATRSLoss(0.5, 0.5, 2, 2, 2.0, generator=torch.Generator().manual_seed(2))
    loss = crit(model, x, y, prior=prior)
    g = torch.Generator().manual_seed(2)
    noise = sample_noise(x, 0.5, 2, generator=g)
    uniforms = torch.rand(4, 2, generator=g)
    terms = catrs_loss(ref, x, y, prior, noise, uniforms, 0.5, 2, 2.0)
    torch.testing.assert_close(loss, terms.loss)
    assert crit.last_terms == pytest.approx(
        {
            "low": float(terms.low.detach()),
            "high": float(terms.high.detach()),
            "accept_rate": float(terms.accept_rate),
            "mean_k": float(terms.mean_k),
        }
    )
    # two train-mode forwards (A and B): BatchNorm's running statistics moved twice
    assert int(model[1].num_batches_tracked) == 2


def test_binomial_draws():
    """K = max(1, Binomial(m, w)): with w = 1/2 from the prior, E[K] = m/2 + P(K=0)."""
    b, m = 4000, 4
    model = nn.Linear(2, 2)
    x, y = torch.rand(b, 2), torch.zeros(b, dtype=torch.long)
    prior = torch.full((b, 2), 0.5)
    crit = CATRSLoss(0.25, 1.0, 1, m, 1.0, confidence="prior", generator=torch.Generator())
    crit.generator.manual_seed(0)
    crit(model, x, y, prior=prior)
    terms = crit.last_terms
    # standard errors: mean_k about 0.015, accept_rate about 0.004
    assert terms["mean_k"] == pytest.approx(2 + 1 / 16, abs=0.07)
    assert terms["accept_rate"] == pytest.approx(1 / 16, abs=0.02)


def test_gradcheck_functional():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    noise = 0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    prior = torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), 1)
    uniforms = torch.tensor([[0.0, 0.0], [0.9, 0.9], [0.0, 0.99]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2])

    class Linear(nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def forward(self, z):
            return torch.tanh(z) @ self.weight

    def fn(x, w):  # num_steps = 0: the adversarial noise is the given noise, a constant
        return catrs_loss(Linear(w), x, y, prior, noise, uniforms, 1.0, 0, 2.0).loss

    assert torch.autograd.gradcheck(fn, (x, w))


def test_no_gradient_into_inputs_and_no_stray_grad():
    model = plain_mlp(torch.float32)
    x = torch.rand(4, 6).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0])
    crit = CATRSLoss(0.25, 1.0, 2, 2, 1.0)
    loss = crit(model, x, y, prior=soft_prior(y, 3))
    assert all(p.grad is None for p in model.parameters())  # the attack left no .grad
    loss.backward()
    assert x.grad is None
    assert all(p.grad is not None for p in model.parameters())


def test_modes_during_the_call_and_state_restored():
    model = Mixed()
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    y = torch.tensor([0, 1, 2, 0])
    CATRSLoss(0.25, 1.0, 2, 2, 1.0)(model, torch.rand(4, 6), y, prior=soft_prior(y, 3)).backward()
    # forward A (as the user set it), T attack forwards in eval with frozen params, forward B
    assert model.seen == [(True, True), (False, False), (False, False), (True, True)]
    assert before == (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


@pytest.mark.parametrize("fail_on_call", [1, 2, 4])
def test_state_restored_after_an_exception(fail_on_call):
    model = Mixed(fail_on_call)
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    crit = CATRSLoss(0.25, 1.0, 2, 2, 1.0)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(RuntimeError, match="boom"):
        crit(model, torch.rand(4, 6), y, prior=soft_prior(y, 3))
    assert crit.last_terms == {}
    assert before == (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


class WithLabelPrior(CATRSLoss):
    """CAT-RS fed a label-derived prior, so that the shared contract checks can call it."""

    def forward(self, model, inputs, targets, prior=None):
        if prior is None and isinstance(targets, torch.Tensor):
            classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
            prior = soft_prior(targets, classes, inputs.dtype)
        return super().forward(model, inputs, targets, prior=prior)


def make(**kw):
    return WithLabelPrior(0.25, 0.5, 2, 2, 1.0, **kw)


def test_contract(checks) -> None:
    checks.state_restored(make)
    checks.runs_in_current_mode(make)
    checks.shapes(make)  # 2-D and 4-D inputs


def test_reproducible() -> None:
    # Not checks.reproducible: its BatchNorm model in train mode would see running statistics
    # moved by the previous call in the eval-mode attack (as in the official code).
    model = plain_mlp(torch.float32)
    x, y = torch.rand(7, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0])

    def loss(seed):
        return make(generator=torch.Generator().manual_seed(seed))(model, x, y).detach()

    assert torch.equal(loss(0), loss(0))
    assert not torch.equal(loss(0), loss(1))


@pytest.mark.slow
def test_smoke_digits(digits) -> None:
    """Training with CAT-RS lowers the noisy cross-entropy on real digits.

    (The CAT-RS loss itself is not monotone in the model's quality: its low part sums more
    copies as the model gets more confident.)
    """
    x, y = digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def noisy_ce() -> float:
        gauss = GaussianAugmentationLoss(0.25, 4, generator=torch.Generator().manual_seed(123))
        return gauss(model, x, y).item()

    criterion = make(generator=torch.Generator().manual_seed(0))
    velocity = [torch.zeros_like(p) for p in model.parameters()]
    start = noisy_ce()
    for _ in range(30):
        model.zero_grad()
        criterion(model, x, y).backward()
        with torch.no_grad():
            for param, buf in zip(model.parameters(), velocity, strict=True):
                buf.mul_(0.9).add_(param.grad)
                param.sub_(0.1 * buf)
    assert noisy_ce() < 0.8 * start


def test_repr_terms_and_attributes():
    crit = CATRSLoss(0.5)
    assert repr(crit) == (
        "CATRSLoss(sigma=0.5, epsilon=1.0, num_steps=4, num_noise=4, lbd=1.0, confidence='model')"
    )
    assert crit.term_names == ("low", "high", "accept_rate", "mean_k")
    assert list(crit.parameters()) == []
    crit.epsilon = 2.0  # the official --warmup doubles epsilon from an epoch on
    y = torch.tensor([0, 1])
    crit(plain_mlp(torch.float32), torch.rand(2, 6), y, prior=soft_prior(y, 3))


BASE = {"sigma": 0.5, "num_noise": 2, "epsilon": 1.0, "num_steps": 2, "lbd": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be positive and finite, got 0.0"),
        ({"num_noise": 0}, ValueError, "num_noise must be a positive integer, got 0"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be positive and finite, got 0.0"),
        ({"epsilon": -1.0}, ValueError, "epsilon must be positive and finite, got -1.0"),
        ({"num_steps": -1}, ValueError, "num_steps must be an integer >= 0, got -1"),
        ({"num_steps": 1.5}, TypeError, "num_steps must be an integer, got float"),
        ({"lbd": -0.5}, ValueError, "lbd must be non-negative and finite, got -0.5"),
        ({"confidence": "vote"}, ValueError, "confidence must be 'model' or 'prior', got 'vote'"),
        ({"confidence": 1}, TypeError, "confidence must be a str, 'model' or 'prior', got int"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator, got int"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CATRSLoss(**{**BASE, **kwargs})


X, Y = torch.full((2, 6), 0.5), torch.tensor([0, 1])
P = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("inputs", "prior", "exc", "match"),
    [
        (X, None, TypeError, "prior must be given"),
        (X, P.tolist(), TypeError, "prior must be a torch.Tensor, got list"),
        (X, P.long(), TypeError, "prior must be a floating-point tensor"),
        (X, P[:1], ValueError, r"prior must have shape \[2, K\]"),
        (X, P[:, :1] * 0 + 1, ValueError, r"prior must have shape \[2, K\] with K >= 2"),
        (X, torch.full((2, 4), 0.25), ValueError, "prior must have one column per class"),
        (X, P * float("nan"), ValueError, "prior must be finite"),
        (X, P - torch.tensor([[0.0, 0.0, 0.5], [0, 0, 0]]), ValueError, "non-negative"),
        (X, P * 0.9, ValueError, r"prior must have rows that sum to 1, got a row \(index 0\)"),
        (X + 0.6, P, ValueError, r"inputs must lie in \[0, 1\]"),
    ],
)
def test_call_errors(inputs, prior, exc, match):
    crit = CATRSLoss(**BASE)
    with pytest.raises(exc, match=match):
        crit(plain_mlp(torch.float32), inputs, Y, prior=prior)
    assert crit.last_terms == {}


def test_functional_errors():
    model, x, y, prior, noise, uniforms = example_batch()
    with pytest.raises(ValueError, match="noise must have shape"):
        catrs_loss(model, x, y, prior, noise[:-1], uniforms, 1.0, 1, 1.0)
    with pytest.raises(ValueError, match=r"uniforms must have shape \(6, 4\)"):
        catrs_loss(model, x, y, prior, noise, uniforms[:, :2], 1.0, 1, 1.0)
    with pytest.raises(ValueError, match="confidence must be one of"):
        catrs_loss(model, x, y, prior, noise, uniforms, 1.0, 1, 1.0, confidence="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon must be positive"):
        catrs_noise_attack(model, x, prior, noise, 0.0, 1)


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(max_value=0.0) | st.just(math.nan) | st.just(math.inf))
def test_any_non_positive_epsilon_is_rejected(epsilon):
    with pytest.raises(ValueError, match="epsilon must be positive"):
        CATRSLoss(0.5, epsilon=epsilon)


# --- the public attack on the noise ---------------------------------------------------------------


def test_noise_attack_module_matches_functional_and_restores_state():
    model = Mixed()
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    prior = torch.full((3, 3), 1 / 3)
    attack = CATRSNoiseAttack(0.5, 1.0, 2, 2, generator=torch.Generator().manual_seed(5))
    adv = attack(model, x, prior)
    assert model.seen == [(False, False), (False, False)]
    noise = sample_noise(x, 0.5, 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(adv, catrs_noise_attack(model, x, prior, noise, 1.0, 2))
    assert before == (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )
    with pytest.raises(ValueError, match="targets must have rows that sum to 1"):
        attack(model, x, prior * 2)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        CATRSNoiseAttack(0.5, 0.0, 2)


# ---------------------------------------------- issue 20, item 4: the research code's epsilon flags
def test_the_official_epsilon_flag_is_refused_with_its_meaning():
    # the official --epsilon 256 is divided by 256 in train_catrs.py: 1.0 in input units
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    crit = CATRSLoss(0.5, 256, 2, 2)
    with pytest.raises(ValueError, match=r"got 256: epsilon is an L2 radius.*epsilon=1\b"):
        crit(model, x, y, prior=soft_prior(y, 3))
    crit.epsilon = 1.0
    assert torch.isfinite(crit(model, x, y, prior=soft_prior(y, 3)))
    with pytest.raises(ValueError, match="flag/256"):
        CATRSNoiseAttack(0.5, 256, 2, 2)(model, x, soft_prior(y, 3))


# ---------------------------------------------- issue 20: one positional order for every criterion
def test_positional_order_is_that_of_smoothadv():
    # sigma, the adversary's size and steps, num_noise, then the weights
    crit = CATRSLoss(0.25, 0.5, 3, 2, 2.0)
    assert (crit.sigma, crit.epsilon, crit.num_steps, crit.num_noise, crit.lbd) == (
        0.25,
        0.5,
        3,
        2,
        2.0,
    )
    # the old order (sigma, m, epsilon, T, lambda) now fails instead of running as another config
    with pytest.raises(TypeError, match="num_steps must be an integer, got float"):
        CATRSLoss(0.25, 4, 1.0, 4)


def test_prior_is_a_required_keyword():
    crit = CATRSLoss(**BASE)
    with pytest.raises(TypeError, match="prior"):
        crit(plain_mlp(torch.float32), X, Y)
    with pytest.raises(TypeError, match="positional"):
        crit(plain_mlp(torch.float32), X, Y, P)
    assert not hasattr(crit, "_prior")  # the prior is never stored on the criterion
