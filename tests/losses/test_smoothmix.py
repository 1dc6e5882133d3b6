"""Tests of rsmooth.losses.SmoothMixLoss and rsmooth.functional.smoothmix_terms."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import SmoothMixLoss
from rsmooth.functional import sample_noise, smoothmix_terms, unrestricted_smooth_attack
from tests.conftest import Mixed, small_cnn, small_mlp


def plain_mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def reference_terms(model, clean, adv, y, noise, lam, detach=False):
    """A plain-loop SmoothMix step in the structure of the official code."""
    b = clean.shape[0]
    m = noise.shape[0] // b
    noises = [noise[i * b : (i + 1) * b] for i in range(m)]
    logits_c = model(torch.cat([clean + n for n in noises]))
    ce_rows = [-F.log_softmax(logits_c[r], 0)[y[r % b]] for r in range(m * b)]
    natural = sum(ce_rows) / (m * b)
    chunks = logits_c.chunk(m)
    f_hat = sum(F.softmax(c, 1) for c in chunks) / m
    if detach:
        f_hat = f_hat.detach()
    correct = [float(int(f_hat[j].argmax()) == int(y[j])) for j in range(b)]
    k = logits_c.shape[1]
    total = 0.0
    for j in range(b):
        xm = (1 - lam[j]) * clean[j] + lam[j] * adv[j]
        t = (1 - lam[j]) * f_hat[j] + lam[j] * torch.full((k,), 1.0 / k, dtype=clean.dtype)
        for i in range(m):
            log_q = F.log_softmax(model((xm + noises[i][j])[None])[0], 0)
            total = total + correct[j] * (t * (t.log() - log_q)).sum()
    return natural, total / (m * b)


def state_of(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_terms_match_reference_loop():
    g = torch.Generator().manual_seed(0)
    model = plain_mlp(torch.float64)
    x = torch.rand(5, 6, generator=g, dtype=torch.float64)
    adv = torch.rand(5, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    noise = sample_noise(x, 0.5, 3, generator=g)
    lam = torch.rand(5, generator=g, dtype=torch.float64) / 2
    # make at least one example correct and one wrong so the mask matters
    natural, mix = smoothmix_terms(model, x, adv, y, noise, lam)
    ref_nat, ref_mix = reference_terms(model, x, adv, y, noise, lam)
    torch.testing.assert_close(natural, ref_nat)
    torch.testing.assert_close(mix, ref_mix)
    assert float(mix.detach()) > 0


def test_mask_excludes_wrong_examples_but_keeps_denominator():
    model = plain_mlp(torch.float64)
    x = torch.full((2, 6), 0.5, dtype=torch.float64)
    noise = torch.zeros(4, 6, dtype=torch.float64)
    pred = int(model(x[:1]).argmax())
    lam = torch.full((2,), 0.3, dtype=torch.float64)
    adv = torch.zeros_like(x)
    y_both = torch.tensor([pred, pred])
    y_one = torch.tensor([pred, (pred + 1) % 3])
    _, mix_both = smoothmix_terms(model, x, adv, y_both, noise, lam)
    _, mix_one = smoothmix_terms(model, x, adv, y_one, noise, lam)
    torch.testing.assert_close(mix_one, mix_both / 2)


@pytest.mark.parametrize("one_step", [False, True])
def test_module_matches_functional(one_step):
    model = small_mlp(6, 3).train()
    ref = copy.deepcopy(model)  # the criterion's train-mode forwards update BN running stats
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0])
    crit = SmoothMixLoss(
        0.5,
        0.3,
        3,
        2,
        5.0,
        one_step_adversary=one_step,
        warmup_epochs=2,
        generator=torch.Generator().manual_seed(2),
    )
    crit.set_epoch(0)  # warm-up factor 1/2
    loss = crit(model, x, y)
    # documented RNG order: noise, then lambda, from the criterion's generator
    g = torch.Generator().manual_seed(2)
    noise = sample_noise(x, 0.5, 2, generator=g)
    ref.eval()
    clean, adv = unrestricted_smooth_attack(
        ref,
        x,
        y,
        noise,
        0.3,
        3,
        mix_step=int(one_step),
        mix_step_max_norm=0.5 * 0.3 * int(one_step),
    )
    ref.train()
    lam = torch.rand(4, generator=g) / 2
    natural, mix = smoothmix_terms(ref, clean, adv, y, noise, lam)
    torch.testing.assert_close(loss, natural + 5.0 * 0.5 * mix)
    assert crit.last_terms == pytest.approx(
        {"natural": float(natural.detach()), "mix": float(mix.detach())}
    )


def test_eta_zero_is_gaussian_augmentation_on_same_noise():
    model = small_mlp(6, 3).train()
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = SmoothMixLoss(
        0.5, 1.0, 2, 3, 0.0, generator=torch.Generator().manual_seed(4), warmup_epochs=0
    )(model, x, y)
    noise = sample_noise(x, 0.5, 3, generator=torch.Generator().manual_seed(4))
    # one forward over the m*B rows, as Gaussian augmentation with m copies does
    reference = F.cross_entropy(
        model(torch.cat([x + noise[i * 6 : (i + 1) * 6] for i in range(3)])), y.repeat(3)
    )
    torch.testing.assert_close(loss, reference)


def test_gradcheck_functional():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    adv = torch.rand(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    noise = sample_noise(x.detach(), 0.3, 2, generator=g)
    lam = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    y = torch.tensor([0, 1, 2])

    def fn(x, adv, w):
        class M(nn.Module):
            def forward(self, z):
                return torch.tanh(z) @ w

        natural, mix = smoothmix_terms(M(), x, adv, y, noise, lam)
        return natural + 2.0 * mix

    assert torch.autograd.gradcheck(fn, (x, adv, w))


class Capture(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.outputs = []

    def forward(self, x):
        out = self.model(x)
        if out.requires_grad:
            out.retain_grad()
        self.outputs.append(out)
        return out


@pytest.mark.parametrize("detach", [False, True])
def test_target_gradient_flow(detach):
    model = Capture(plain_mlp())
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    adv = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    y = model.model(x).argmax(1)  # all correct: the mask is 1
    model.outputs.clear()
    noise = sample_noise(x, 0.1, 2, generator=torch.Generator().manual_seed(2))
    _, mix = smoothmix_terms(model, x, adv, y, noise, torch.full((4,), 0.25), detach_target=detach)
    mix.backward()
    clean_logits = model.outputs[0]
    if detach:
        assert clean_logits.grad is None
    else:
        assert clean_logits.grad is not None
        assert float(clean_logits.grad.abs().sum()) > 0


def test_detach_target_changes_parameter_gradient():
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    grads = []
    for detach in (False, True):
        model = plain_mlp()
        crit = SmoothMixLoss(
            0.1,
            0.5,
            2,
            2,
            5.0,
            detach_target=detach,
            generator=torch.Generator().manual_seed(3),
            warmup_epochs=0,
        )
        # make every example correct so the mix term is active
        y = model(x).argmax(1)
        crit(model, x, y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_no_gradient_into_attack_or_inputs():
    model = plain_mlp()
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loss = SmoothMixLoss(0.25, 0.5, 2, 2, 1.0, one_step_adversary=True, warmup_epochs=0)(
        model, x, torch.tensor([0, 1, 2, 0])
    )
    loss.backward()
    assert x.grad is None
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("fail_on_call", [None, 1, 3])
def test_model_state_restored_and_modes(fail_on_call):
    model = Mixed(fail_on_call)
    before = state_of(model)
    crit = SmoothMixLoss(0.25, 0.5, 2, 2, 1.0, warmup_epochs=0)
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    if fail_on_call is None:
        crit(model, x, y).backward()
        # T attack forwards in eval with frozen params, then 2 loss forwards as the user set it
        assert model.seen == [(False, False), (False, False), (True, True), (True, True)]
    else:
        with pytest.raises(RuntimeError, match="boom"):
            crit(model, x, y)
        assert crit.last_terms == {}
    assert state_of(model) == before


def test_no_stray_grad_from_attack():
    model = plain_mlp()
    crit = SmoothMixLoss(0.25, 0.5, 3, 2, 1.0, warmup_epochs=0)
    crit(model, torch.rand(4, 6), torch.tensor([0, 1, 2, 0]))  # no backward
    assert all(p.grad is None for p in model.parameters())


def test_seeded_reproducibility():
    model = plain_mlp()
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])

    def run(seed):
        return SmoothMixLoss(
            0.5, 0.5, 2, 2, 1.0, generator=torch.Generator().manual_seed(seed), warmup_epochs=0
        )(model, x, y)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("kind", ["2d", "4d"])
def test_2d_and_4d(kind, device):
    g = torch.Generator().manual_seed(0)
    if kind == "2d":
        model, x = small_mlp(6, 3), torch.rand(4, 6, generator=g)
    else:
        model, x = small_cnn(3), torch.rand(4, 1, 8, 8, generator=g)
    model, x = model.to(device), x.to(device)
    crit = SmoothMixLoss(
        0.5,
        0.5,
        2,
        2,
        1.0,
        one_step_adversary=True,
        generator=torch.Generator(device=device).manual_seed(0),
        warmup_epochs=0,
    )
    loss = crit(model, x, torch.tensor([0, 1, 2, 0], device=device))
    assert loss.shape == ()
    loss.backward()


def test_repr_and_scheduled_values():
    crit = SmoothMixLoss(0.5, 1.0, 4, 2, 5.0)
    assert repr(crit) == (
        "SmoothMixLoss(sigma=0.5, step_size=1.0, num_steps=4, num_noise=2, eta=5.0, "
        "one_step_adversary=False, warmup_epochs=10)"
    )
    assert crit.term_names == ("natural", "mix")
    assert dict(crit.scheduled) == {"warmup": 1.0, "eta": 5.0}  # before set_epoch: unscheduled
    crit.set_epoch(0)
    assert dict(crit.scheduled) == {"warmup": 0.1, "eta": 0.5}
    assert crit.eta == 5.0


X = torch.full((2, 6), 0.5)
Y = torch.tensor([0, 1])
BASE = {
    "sigma": 0.5,
    "step_size": 1.0,
    "num_steps": 2,
    "num_noise": 2,
    "eta": 1.0,
    "warmup_epochs": 0,
}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be positive"),
        ({"sigma": None}, TypeError, "sigma must be a real number"),
        ({"step_size": 0.0}, ValueError, "step_size must be positive"),
        ({"num_steps": 0}, ValueError, "num_steps must be a positive integer"),
        ({"num_noise": 2.0}, TypeError, "num_noise must be an integer"),
        ({"eta": -1.0}, ValueError, "eta must be non-negative"),
        ({"warmup": 0.5}, TypeError, "unexpected keyword argument 'warmup'"),  # scheduled only
        ({"warmup_epochs": -1}, ValueError, "warmup_epochs must be an integer >= 0"),
        ({"one_step_adversary": 1}, TypeError, "one_step_adversary must be a bool"),
        ({"detach_target": "no"}, TypeError, "detach_target must be a bool"),
        ({"max_norm": -2.0}, ValueError, "max_norm must be positive"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SmoothMixLoss(**{**BASE, **kwargs})


@pytest.mark.parametrize(
    ("inputs", "targets", "exc", "match"),
    [
        (X + 0.6, Y, ValueError, r"inputs must lie in \[0, 1\]"),
        (X * float("nan"), Y, ValueError, "inputs must be finite"),
        (X, Y[:1], ValueError, "targets must have shape"),
        (X.int(), Y, TypeError, "inputs must be a floating-point tensor"),
    ],
)
def test_call_errors(inputs, targets, exc, match):
    with pytest.raises(exc, match=match):
        SmoothMixLoss(**BASE)(small_mlp(6, 3), inputs, targets)


def test_functional_noise_shape_error():
    with pytest.raises(ValueError, match="noise must have shape"):
        smoothmix_terms(small_mlp(6, 3), X, X, Y, torch.zeros(3, 6), torch.zeros(2))


@settings(max_examples=25, deadline=None)
@given(eta=st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False))
def test_negative_eta_rejected_property(eta):
    with pytest.raises(ValueError, match="eta must be non-negative"):
        SmoothMixLoss(**{**BASE, "eta": eta})


@pytest.mark.slow
def test_smoke_digits_training_reduces_loss():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data[:256] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target[:256])
    torch.manual_seed(0)
    model = small_cnn(10)
    crit = SmoothMixLoss(
        0.25, 0.5, 2, 2, 1.0, generator=torch.Generator().manual_seed(0), warmup_epochs=0
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def evaluate():
        model.eval()
        crit.generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            value = float(crit(model, x, y))
        model.train()
        return value

    before = evaluate()
    for _ in range(3):
        for i in range(0, 256, 64):
            opt.zero_grad()
            crit(model, x[i : i + 64], y[i : i + 64]).backward()
            opt.step()
    assert evaluate() < before
