"""Tests of rsmooth.AdaptiveNoiseLoss and rsmooth.functional.adaptive_noise_attack (Sun et al.)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import AdaptiveNoiseAttack, AdaptiveNoiseLoss, GaussianAugmentationLoss
from rsmooth.functional import adaptive_noise_attack, gaussian_augmentation_loss, sample_noise
from tests.conftest import Mixed, small_mlp


def plain_mlp(dtype=torch.float64):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def reference_attack(model, x, y, noise, eps, steps):
    """ADAPTIVEADV one row at a time (Algorithm 1 of the paper, as the code batches it)."""
    b, m = x.shape[0], noise.shape[0] // x.shape[0]
    rows, stops = [], []
    for r in range(m * b):
        j = r % b
        n = noise[r].clone()
        radius = noise[r].norm()
        kept, stop = None, -1
        for t in range(steps):
            n = n.detach().requires_grad_(True)
            z = model((x[j] + n)[None])[0]
            if kept is None and int(z.argmax()) != int(y[j]):
                kept, stop = n.detach().clone(), t
            ce = -torch.log_softmax(z, 0)[y[j]] / m
            (g,) = torch.autograd.grad(ce, n)
            with torch.no_grad():
                n = n + eps * g / (g.norm() + 1e-8)
                n = n / (n.norm() + 1e-8) * radius
        rows.append(n.detach() if kept is None else kept)
        stops.append(stop)
    return torch.stack(rows), stops


def example_batch(seed=0, b=8, m=3, sigma=0.6):
    g = torch.Generator().manual_seed(seed)
    model = plain_mlp()
    x = torch.rand(b, 6, generator=g, dtype=torch.float64)
    noise = sigma * torch.randn(m * b, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean-correct labels: some noisy rows flip, some do not
    return model, x, y, noise


def test_attack_matches_reference_loop():
    model, x, y, noise = example_batch()
    result = adaptive_noise_attack(model, x, y, noise, epsilon=0.5, num_steps=4)
    expected, stops = reference_attack(model, x, y, noise, 0.5, 4)
    torch.testing.assert_close(result.noise, expected)
    assert result.stop_step.tolist() == stops
    assert 0 in stops and -1 in stops and any(s > 0 for s in stops)  # every branch exercised


def test_attack_keeps_norms_and_leaves_misclassified_rows_unchanged():
    model, x, y, noise = example_batch(1)
    result = adaptive_noise_attack(model, x, y, noise, epsilon=1.0, num_steps=5)
    torch.testing.assert_close(result.noise.norm(dim=1), noise.norm(dim=1), rtol=1e-7, atol=0)
    with torch.no_grad():
        wrong = model(x.repeat(3, 1) + noise).argmax(1) != y.repeat(3)
    assert bool(wrong.any()) and bool((~wrong).any())
    assert torch.equal(result.noise[wrong], noise[wrong])  # stopped at iterate 0
    assert bool((result.stop_step[wrong] == 0).all())
    assert bool((result.noise[~wrong] != noise[~wrong]).any(dim=1).all())


def test_attack_4d():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(3, 1, 4, 4, generator=g), torch.tensor([0, 1, 2])
    noise = 0.5 * torch.randn(6, 1, 4, 4, generator=g)
    out = adaptive_noise_attack(model, x, y, noise, 0.3, 3).noise
    assert out.shape == noise.shape
    torch.testing.assert_close(out.flatten(1).norm(dim=1), noise.flatten(1).norm(dim=1))


def test_zero_steps_and_not_adversarial_are_gaussian_augmentation():
    """§C: with T = 0 (or the adversary off, phase 1) the loss is m-copy Gaussian CE."""
    model, x, y, noise = example_batch()
    result = adaptive_noise_attack(model, x, y, noise, 1.0, 0)
    assert torch.equal(result.noise, noise)
    assert result.stop_step.tolist() == [-1] * noise.shape[0]
    xf, yf = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
    mlp = plain_mlp(torch.float32)
    gauss = GaussianAugmentationLoss(0.5, 3, generator=torch.Generator().manual_seed(4))(
        mlp, xf, yf
    )
    for kwargs in ({"num_steps": 0}, {"num_steps": 3, "adversarial": False}):
        crit = AdaptiveNoiseLoss(
            0.5, 0.25, num_noise=3, generator=torch.Generator().manual_seed(4), **kwargs
        )
        assert torch.equal(crit(mlp, xf, yf), gauss)
        assert crit.last_terms["unchanged_rate"] == 0.0


def test_module_matches_functional_and_terms():
    model = small_mlp(6, 3).train()
    ref = small_mlp(6, 3)
    ref.load_state_dict(model.state_dict())
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train()
    crit = AdaptiveNoiseLoss(1.0, 0.5, 3, 2, generator=torch.Generator().manual_seed(2))
    loss = crit(model, x, y)
    noise = sample_noise(x, 1.0, 2, generator=torch.Generator().manual_seed(2))
    ref.eval()
    result = adaptive_noise_attack(ref, x, y, noise, 0.5, 3)
    ref.train()
    expected = gaussian_augmentation_loss(ref, x, y, result.noise).loss
    torch.testing.assert_close(loss, expected)
    stops = result.stop_step
    assert crit.last_terms == pytest.approx(
        {
            "ce": float(expected.detach()),
            "attack_stop_rate": float((stops >= 0).float().mean()),
            "unchanged_rate": float((stops == 0).float().mean()),
        }
    )


def test_gradient_treats_the_attack_as_a_constant():
    model, x, y, _ = example_batch()
    crit = AdaptiveNoiseLoss(0.6, 0.5, 3, 3, generator=torch.Generator().manual_seed(0))
    got = torch.autograd.grad(crit(model, x, y), list(model.parameters()))
    noise = sample_noise(x, 0.6, 3, generator=torch.Generator().manual_seed(0))
    adv = adaptive_noise_attack(model, x, y, noise, 0.5, 3).noise
    ce = F.cross_entropy(model(x.repeat(3, 1) + adv), y.repeat(3))
    want = torch.autograd.grad(ce, list(model.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_functional():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    noise = 0.5 * torch.randn(6, 4, generator=g, dtype=torch.float64)

    class Linear(nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def forward(self, z):
            return torch.tanh(z) @ self.weight

    adv = adaptive_noise_attack(Linear(w.detach()), x.detach(), y, noise, 0.5, 3).noise

    def fn(x, w):  # the training loss on the (constant) adversarial noise
        return gaussian_augmentation_loss(Linear(w), x, y, adv).loss

    assert torch.autograd.gradcheck(fn, (x, w))


def test_modes_during_the_call():
    model = Mixed()
    AdaptiveNoiseLoss(0.25, 0.5, 2, 2)(model, torch.rand(4, 6), torch.tensor([0, 1, 2, 0]))
    assert model.seen == [(False, False), (False, False), (True, True)]


def test_contract(checks) -> None:
    make = lambda **kw: AdaptiveNoiseLoss(0.25, 0.5, 2, 2, **kw)
    checks.state_restored(make)
    checks.runs_in_current_mode(make)
    checks.shapes(make)  # 2-D and 4-D inputs


def test_reproducible() -> None:
    # Not checks.reproducible: with its BatchNorm model in train mode, the eval-mode attack sees
    # the running statistics that the previous call moved.
    model = plain_mlp(torch.float32)
    x, y = torch.rand(7, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0])

    def loss(seed):
        crit = AdaptiveNoiseLoss(0.5, 0.5, 2, 2, generator=torch.Generator().manual_seed(seed))
        return crit(model, x, y).detach()

    assert torch.equal(loss(0), loss(0))
    assert not torch.equal(loss(0), loss(1))


@pytest.mark.slow
def test_smoke_digits(checks, digits) -> None:
    checks.smoke(lambda **kw: AdaptiveNoiseLoss(0.25, 0.25, 2, 2, **kw), digits, steps=20)


def test_set_epoch_schedule_and_repr():
    crit = AdaptiveNoiseLoss(0.5, 0.25, 6, adversarial_from=3)
    assert repr(crit) == (
        "AdaptiveNoiseLoss(sigma=0.5, epsilon=0.25, num_steps=6, num_noise=4, adversarial=True)"
    )
    states = []
    for epoch in range(5):
        crit.set_epoch(epoch)
        states.append(crit.scheduled["adversarial"])
        assert crit.adversarial is True  # the switch the user set is never changed
    assert states == [False, False, False, True, True]
    crit.adversarial = False  # the user's switch wins in every epoch
    assert crit.scheduled["adversarial"] is False
    plain = AdaptiveNoiseLoss(0.5, 0.25, 6, adversarial=False)
    plain.set_epoch(100)  # no schedule: the attribute is the caller's
    assert plain.adversarial is False and plain.scheduled["adversarial"] is False
    assert crit.term_names == ("ce", "attack_stop_rate", "unchanged_rate")
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        crit.set_epoch(-1)


BASE = {"sigma": 0.5, "epsilon": 0.25, "num_steps": 2, "num_noise": 2}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": -1.0}, ValueError, "sigma must be positive and finite, got -1.0"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be positive and finite, got 0.0"),
        ({"epsilon": "0.1"}, TypeError, "epsilon must be a real number, got str"),
        ({"num_steps": -1}, ValueError, "num_steps must be an integer >= 0, got -1"),
        ({"num_noise": 0}, ValueError, "num_noise must be a positive integer, got 0"),
        ({"adversarial": 1}, TypeError, "adversarial must be a bool, got int"),
        ({"adversarial_from": -2}, ValueError, "adversarial_from must be an integer >= 0"),
        ({"generator": 1}, TypeError, "generator must be a torch.Generator, got int"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        AdaptiveNoiseLoss(**{**BASE, **kwargs})


@pytest.mark.parametrize(
    ("inputs", "targets", "exc", "match"),
    [
        (torch.full((2, 6), 1.5), torch.tensor([0, 1]), ValueError, r"inputs must lie in \[0, 1\]"),
        (torch.full((2, 6), 0.5), torch.tensor([0]), ValueError, "targets must have shape"),
    ],
)
def test_call_errors(inputs, targets, exc, match):
    with pytest.raises(exc, match=match):
        AdaptiveNoiseLoss(**BASE)(small_mlp(6, 3), inputs, targets)


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(max_value=0.0) | st.just(math.nan) | st.just(math.inf))
def test_any_non_positive_epsilon_is_rejected(epsilon):
    with pytest.raises(ValueError, match="epsilon must be positive"):
        AdaptiveNoiseLoss(0.5, epsilon, 2)


def test_noise_attack_module():
    model = Mixed()
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    x, y = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])
    attack = AdaptiveNoiseAttack(0.5, 0.3, 2, 2, generator=torch.Generator().manual_seed(5))
    assert repr(attack) == "AdaptiveNoiseAttack(sigma=0.5, epsilon=0.3, num_steps=2, num_noise=2)"
    adv = attack(model, x, y)
    noise = sample_noise(x, 0.5, 2, generator=torch.Generator().manual_seed(5))
    expected = adaptive_noise_attack(model, x, y, noise, 0.3, 2)
    torch.testing.assert_close(adv, expected.noise)
    assert torch.equal(attack.last_stop_step, expected.stop_step)
    assert before == (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\]"):
        attack(model, x + 2, y)
    assert attack.last_stop_step is None
