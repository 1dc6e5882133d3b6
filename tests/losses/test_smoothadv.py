"""Tests of rsmooth.losses.SmoothAdvLoss and rsmooth.functional.smoothadv_loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import SmoothAdvLoss
from rsmooth.functional import (
    sample_noise,
    smooth_ddn_attack,
    smooth_pgd_attack,
    smoothadv_loss,
)
from tests.conftest import Mixed, Spy, small_cnn, small_mlp


def plain_mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def state_of(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_loss_matches_reference_loop():
    g = torch.Generator().manual_seed(0)
    model = plain_mlp(torch.float64)
    adv = torch.rand(4, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    noise = sample_noise(adv, 0.5, 3, generator=g)
    total = 0.0
    for i in range(3):
        for j in range(4):
            logits = model((adv[j] + noise[i * 4 + j])[None])[0]
            total = total - F.log_softmax(logits, 0)[y[j]]
    torch.testing.assert_close(smoothadv_loss(model, adv, y, noise), total / 12)


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_module_matches_functional(attack):
    model = small_mlp(6, 3).train()
    ref = copy.deepcopy(model)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0])
    crit = SmoothAdvLoss(
        0.5, 0.4, 3, 2, attack=attack, generator=torch.Generator().manual_seed(2), warmup_epochs=0
    )
    loss = crit(model, x, y)
    g = torch.Generator().manual_seed(2)
    noise = sample_noise(x, 0.5, 2, generator=g)
    ref.eval()
    if attack == "pgd":
        adv = smooth_pgd_attack(ref, x, y, noise, 0.4, 3, generator=g)
    else:
        adv = smooth_ddn_attack(ref, x, y, noise, 0.4, 3, init_norm=0.4, generator=g)
    ref.train()
    expected = smoothadv_loss(ref, adv, y, noise)
    torch.testing.assert_close(loss, expected)
    assert crit.last_terms == pytest.approx({"adversarial": float(expected.detach())})


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_epsilon_zero_is_gaussian_augmentation_on_same_noise(attack):
    model = small_mlp(6, 3).train()
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    crit = SmoothAdvLoss(
        0.5, 0.0, 2, 3, attack=attack, generator=torch.Generator().manual_seed(4), warmup_epochs=0
    )
    loss = crit(model, x, y)
    noise = sample_noise(x, 0.5, 3, generator=torch.Generator().manual_seed(4))
    reference = F.cross_entropy(model(x.repeat(3, 1) + noise), y.repeat(3))
    torch.testing.assert_close(loss, reference)


def test_epsilon_is_a_plain_attribute_used_by_the_attack():
    spy = Spy(plain_mlp())
    x = 0.3 + 0.4 * torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    crit = SmoothAdvLoss(
        0.25, 1.0, 2, 2, generator=torch.Generator().manual_seed(1), warmup_epochs=0
    )
    for epoch in range(3):
        crit.epsilon = min(1.0, (epoch + 1) * 1.0 / 10)  # official warm-up
        spy.seen.clear()
        crit(spy, x, y)
        noise = sample_noise(x, 0.25, 2, generator=torch.Generator().manual_seed(0))
        points = (spy.seen[-1] - spy.seen[0] + x.repeat(2, 1)).reshape(2, 4, 6)[0]
        assert bool(((points - x).norm(dim=1) <= crit.epsilon + 1e-6).all())
        assert len(spy.seen) == 3  # T attack forwards + 1 loss forward
        assert noise.shape == spy.seen[0].shape


def test_same_noise_for_attack_and_loss():
    spy = Spy(plain_mlp())
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    SmoothAdvLoss(0.25, 0.5, 3, 2, generator=torch.Generator().manual_seed(9), warmup_epochs=0)(
        spy, x, torch.tensor([0, 1, 2, 0])
    )
    noise = sample_noise(x, 0.25, 2, generator=torch.Generator().manual_seed(9))
    for z in spy.seen:
        points = (z - noise).reshape(2, 4, 6)
        torch.testing.assert_close(points[0], points[1])


def test_gradcheck_functional():
    g = torch.Generator().manual_seed(0)
    adv = torch.rand(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    noise = sample_noise(adv.detach(), 0.3, 2, generator=g)
    y = torch.tensor([0, 1, 2])

    def fn(adv, w):
        class M(nn.Module):
            def forward(self, z):
                return torch.tanh(z) @ w

        return smoothadv_loss(M(), adv, y, noise)

    assert torch.autograd.gradcheck(fn, (adv, w))


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_no_gradient_into_attack_or_inputs(attack):
    model = plain_mlp()
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    crit = SmoothAdvLoss(0.25, 0.5, 2, 2, attack=attack, warmup_epochs=0)
    loss = crit(model, x, torch.tensor([0, 1, 2, 0]))
    assert all(p.grad is None for p in model.parameters())  # attack left no .grad
    loss.backward()
    assert x.grad is None
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
@pytest.mark.parametrize("fail_on_call", [None, 1, 3])
def test_model_state_restored_and_modes(attack, fail_on_call):
    model = Mixed(fail_on_call)
    before = state_of(model)
    crit = SmoothAdvLoss(0.25, 0.5, 2, 2, attack=attack, warmup_epochs=0)
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    if fail_on_call is None:
        crit(model, x, y).backward()
        assert model.seen == [(False, False), (False, False), (True, True)]
    else:
        with pytest.raises(RuntimeError, match="boom"):
            crit(model, x, y)
        assert crit.last_terms == {}
    assert state_of(model) == before


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_seeded_reproducibility(attack):
    model = plain_mlp()
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return SmoothAdvLoss(0.5, 0.5, 2, 2, attack=attack, generator=gen, warmup_epochs=0)(
            model, x, y
        )

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
@pytest.mark.parametrize("kind", ["2d", "4d"])
def test_2d_and_4d(kind, attack, device):
    g = torch.Generator().manual_seed(0)
    if kind == "2d":
        model, x = small_mlp(6, 3), torch.rand(4, 6, generator=g)
    else:
        model, x = small_cnn(3), torch.rand(4, 1, 8, 8, generator=g)
    model, x = model.to(device), x.to(device)
    crit = SmoothAdvLoss(
        0.5,
        0.5,
        2,
        2,
        attack=attack,
        generator=torch.Generator(device=device).manual_seed(0),
        warmup_epochs=0,
    )
    loss = crit(model, x, torch.tensor([0, 1, 2, 0], device=device))
    assert loss.shape == ()
    loss.backward()


def test_repr_and_terms():
    crit = SmoothAdvLoss(0.25, 255 / 256, 10, 8, attack="ddn")
    assert repr(crit) == (
        "SmoothAdvLoss(sigma=0.25, epsilon=0.99609375, num_steps=10, num_noise=8, attack='ddn', "
        "warmup_epochs=10)"
    )
    assert crit.term_names == ("adversarial",)


X = torch.full((2, 6), 0.5)
Y = torch.tensor([0, 1])
BASE = {"sigma": 0.5, "epsilon": 0.5, "num_steps": 2, "num_noise": 2, "warmup_epochs": 0}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": -1.0}, ValueError, "sigma must be positive"),
        ({"sigma": "0.5"}, TypeError, "sigma must be a real number"),
        ({"epsilon": -0.5}, ValueError, "epsilon must be non-negative"),
        ({"epsilon": float("inf")}, ValueError, "epsilon must be non-negative"),
        ({"num_steps": 0}, ValueError, "num_steps must be a positive integer"),
        ({"num_noise": 0}, ValueError, "num_noise must be a positive integer"),
        ({"num_noise": 1.0}, TypeError, "num_noise must be an integer"),
        ({"attack": "fgsm"}, ValueError, "attack must be 'pgd' or 'ddn'"),
        ({"generator": 1}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SmoothAdvLoss(**{**BASE, **kwargs})


@pytest.mark.parametrize(
    ("inputs", "targets", "exc", "match"),
    [
        (X + 0.6, Y, ValueError, r"inputs must lie in \[0, 1\]"),
        (X - 0.6, Y, ValueError, r"inputs must lie in \[0, 1\]"),
        (X, Y[:1], ValueError, "targets must have shape"),
        (X, Y.float(), TypeError, "targets must be an integer tensor"),
    ],
)
def test_call_errors(inputs, targets, exc, match):
    with pytest.raises(exc, match=match):
        SmoothAdvLoss(**BASE)(small_mlp(6, 3), inputs, targets)


def test_bad_epsilon_attribute_rejected_on_assignment():
    crit = SmoothAdvLoss(**BASE)
    with pytest.raises(ValueError, match="epsilon must be non-negative"):
        crit.epsilon = -1.0
    assert crit.epsilon == 0.5  # the old value is kept
    assert torch.isfinite(crit(small_mlp(6, 3), X, Y))


def test_functional_noise_shape_error():
    with pytest.raises(ValueError, match="noise must have shape"):
        smoothadv_loss(small_mlp(6, 3), X, Y, torch.zeros(3, 6))


@settings(max_examples=25, deadline=None)
@given(epsilon=st.floats(min_value=0.0, max_value=1e6))
def test_nonnegative_epsilon_accepted_property(epsilon):
    assert SmoothAdvLoss(**{**BASE, "epsilon": epsilon}).epsilon == epsilon


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_smoke_digits_training_reduces_loss(attack):
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data[:256] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target[:256])
    torch.manual_seed(0)
    model = small_cnn(10)
    crit = SmoothAdvLoss(0.25, 0.5, 2, 2, attack=attack, warmup_epochs=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def evaluate():
        model.eval()
        crit.generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            value = float(crit(model, x, y))
        model.train()
        return value

    before = evaluate()
    crit.generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for i in range(0, 256, 64):
            opt.zero_grad()
            crit(model, x[i : i + 64], y[i : i + 64]).backward()
            opt.step()
    assert evaluate() < before


# ---------------------------------------------- issue 20, item 4: the research code's epsilon flags
def _cifar_like():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    return model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1])


@pytest.mark.parametrize("flag", [64, 127, 255, 512])
@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_an_integer_epsilon_flag_is_refused_with_its_meaning(flag, attack):
    # sqrt(3 * 32 * 32) = 55.4: every official flag is larger than the box's diameter
    model, x, y = _cifar_like()
    crit = SmoothAdvLoss(0.5, flag, 10, 4, attack=attack, warmup_epochs=0)
    before = [p.clone() for p in model.parameters()]
    message = (
        rf"epsilon must be at most the diameter of the input box \[0, 1\]\^3072, .*55.43, got "
        rf"{flag}: epsilon is an L2 radius in input units.*flag/256.*epsilon={flag / 256:.6g}"
    )
    with pytest.raises(ValueError, match=message):
        crit(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_diameter_is_checked_whatever_the_warmup():
    model, x, y = _cifar_like()
    crit = SmoothAdvLoss(0.5, 255, 10, 4)  # epsilon_0 = 25.5 would still be far too large
    crit.set_epoch(0)
    with pytest.raises(ValueError, match="flag/256"):
        crit(model, x, y)


@settings(max_examples=20, deadline=None, database=None)
@given(dim=st.integers(1, 64), scale=st.floats(0.0, 3.0))
def test_epsilon_up_to_the_diameter_runs_and_beyond_it_raises(dim, scale):
    model = nn.Linear(dim, 2)
    x, y = torch.full((2, dim), 0.5), torch.tensor([0, 1])
    epsilon = scale * math.sqrt(dim)
    crit = SmoothAdvLoss(0.5, epsilon, 1, 1, warmup_epochs=0)
    if epsilon > math.sqrt(dim):
        with pytest.raises(ValueError, match="diameter of the input box"):
            crit(model, x, y)
    else:
        assert torch.isfinite(crit(model, x, y))
