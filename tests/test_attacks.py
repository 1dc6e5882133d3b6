"""Tests of rsmooth.attacks and the attack functions of rsmooth.functional."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import (
    AdaptiveNoiseAttack,
    CATRSNoiseAttack,
    SmoothDDNAttack,
    SmoothPGDAttack,
    UnrestrictedSmoothAttack,
)
from rsmooth.functional import (
    sample_noise,
    smooth_ddn_attack,
    smooth_pgd_attack,
    unrestricted_smooth_attack,
)
from tests.conftest import LinearTwoClass, Spy, small_cnn, small_mlp

ATTACKS = {
    "unrestricted": lambda g=None: UnrestrictedSmoothAttack(0.25, 0.3, 3, 2, generator=g),
    "pgd": lambda g=None: SmoothPGDAttack(0.25, 0.5, 3, 2, generator=g),
    "ddn": lambda g=None: SmoothDDNAttack(0.25, 0.5, 3, 2, generator=g),
}


def interior(shape, generator, device="cpu", dtype=torch.float32):
    """Inputs well inside [0, 1], so that small steps are not clamped."""
    return 0.3 + 0.4 * torch.rand(shape, generator=generator, dtype=dtype).to(device)


def smoothed_nll(model, x, y, noise):
    """Reference -log F̂_y(x), a plain loop over the m copies (noise-major slices)."""
    m = noise.shape[0] // x.shape[0]
    probs = sum(F.softmax(model(x + noise[i * len(x) : (i + 1) * len(x)]), 1) for i in range(m))
    return -torch.log((probs / m).gather(1, y[:, None]).squeeze(1).clamp(min=1e-20))


def row_norms(t):
    return t.flatten(1).norm(dim=1)


class MixedModel(nn.Module):
    """Mixes train/eval submodules and frozen params; can raise on a chosen call."""

    def __init__(self, fail_on_call=None):
        super().__init__()
        self.body = small_mlp(6, 3)
        self.body[1].eval()
        self.body[0].weight.requires_grad_(False)
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.seen_state = []

    def forward(self, x):
        self.calls += 1
        frozen = all(not p.requires_grad for p in self.parameters())
        modes = {m.training for m in self.modules()}
        self.seen_state.append((modes, frozen))
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("boom")
        return self.body(x)


def state_of(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


# ----------------------------------------------------------------------------- unrestricted


def test_one_step_is_exactly_one_normalized_step(generator, device):
    model = small_mlp(6, 3).to(device).eval()
    x = interior((5, 6), generator, device)
    y = torch.tensor([0, 1, 2, 0, 1], device=device)
    noise = sample_noise(x, 0.25, 3, generator=generator)
    x1, _ = unrestricted_smooth_attack(model, x, y, noise, 0.05, 3, mix_step=1)
    # independent reference: one ascent step on the CE of the averaged softmax
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(smoothed_nll(model, xr, y, noise).sum(), xr)
    expected = x + 0.05 * grad / (row_norms(grad)[:, None] + 1e-8)
    torch.testing.assert_close(x1, expected)
    torch.testing.assert_close(row_norms(x1 - x), torch.full((5,), 0.05, device=device))


def test_one_step_norm_at_most_step_size_with_clamping(generator):
    model = small_mlp(6, 3).eval()
    x = torch.rand(8, 6, generator=generator).round()  # corners: clamping happens
    y = torch.arange(8) % 3
    attack = UnrestrictedSmoothAttack(0.25, 0.7, 2, 2, generator=generator)
    x_adv = attack(model, x, y)
    assert attack.last_one_step is not None
    assert bool((row_norms(attack.last_one_step - x) <= 0.7 + 1e-6).all())
    for out in (x_adv, attack.last_one_step):
        assert float(out.min()) >= 0.0
        assert float(out.max()) <= 1.0


def test_unrestricted_matches_reference_loop(generator):
    """Compare T steps with a plain loop over the m noises (official structure)."""
    model = small_mlp(6, 3).eval()
    x = torch.rand(4, 6, generator=generator)
    y = torch.tensor([0, 1, 2, 1])
    noise = sample_noise(x, 0.5, 3, generator=generator)
    x_init, x_adv = unrestricted_smooth_attack(model, x, y, noise, 0.4, 4, mix_step=1)
    cur, snap = x.clone(), x.clone()
    for t in range(4):
        if t == 1:
            snap = cur.clone()
        cur.requires_grad_(True)
        (grad,) = torch.autograd.grad(smoothed_nll(model, cur, y, noise).sum(), cur)
        cur = (cur.detach() + 0.4 * grad / (row_norms(grad)[:, None] + 1e-8)).clamp(0, 1)
    torch.testing.assert_close(x_adv, cur)
    torch.testing.assert_close(x_init, snap)


def test_mix_step_zero_gives_clean_inputs(generator):
    model = small_mlp(6, 3).eval()
    x = torch.rand(4, 6, generator=generator)
    y = torch.tensor([0, 1, 2, 1])
    noise = sample_noise(x, 0.5, 2, generator=generator)
    x_init, x_adv = unrestricted_smooth_attack(model, x, y, noise, 0.5, 3, mix_step=0)
    assert torch.equal(x_init, x)
    assert not torch.equal(x_adv, x)
    x_init, _ = unrestricted_smooth_attack(model, x, y, noise, 0.5, 3, mix_step=3)  # s >= T
    assert torch.equal(x_init, x)


def test_one_step_cap(generator):
    model = small_mlp(6, 3).eval()
    x = interior((4, 6), generator)
    y = torch.tensor([0, 1, 2, 1])
    attack = UnrestrictedSmoothAttack(0.25, 0.2, 2, 2, one_step_max_norm=0.05)
    attack(model, x, y)
    torch.testing.assert_close(row_norms(attack.last_one_step - x), torch.full((4,), 0.05))


@pytest.mark.parametrize("max_norm", [0.1, 0.5])
def test_max_norm_respected(generator, max_norm):
    model = small_mlp(6, 3).eval()
    x = torch.rand(6, 6, generator=generator)
    y = torch.arange(6) % 3
    attack = UnrestrictedSmoothAttack(0.25, 0.3, 5, 2, max_norm=max_norm, generator=generator)
    x_adv = attack(model, x, y)
    assert bool((row_norms(x_adv - x) <= max_norm + 1e-6).all())
    assert float(x_adv.min()) >= 0.0
    assert float(x_adv.max()) <= 1.0


def test_num_steps_one_snapshot_is_clean(generator):
    # official snapshot rule: the iterate *before* update 1 is never taken when T = 1
    model = small_mlp(6, 3).eval()
    x = interior((3, 6), generator)
    attack = UnrestrictedSmoothAttack(0.25, 0.2, 1, 2, generator=generator)
    attack(model, x, torch.tensor([0, 1, 2]))
    assert torch.equal(attack.last_one_step, x)


# ----------------------------------------------------------------------------- PGD / DDN


def test_pgd_matches_example_major_reference(generator):
    """An independent Salman-style loop (example-major copies, SGD on delta) gives the same."""
    model = small_mlp(6, 3).eval()
    x = torch.rand(4, 6, generator=generator)
    y = torch.tensor([0, 1, 2, 1])
    m, eps, steps = 3, 0.4, 4
    noise = sample_noise(x, 0.5, m, generator=generator)
    out = smooth_pgd_attack(model, x, y, noise, eps, steps)
    # example-major: row j*m + i is copy i of example j
    noise_em = noise.reshape(m, 4, 6).transpose(0, 1).reshape(-1, 6)
    big_x = x.repeat_interleave(m, dim=0)
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.SGD([delta], lr=2 * eps / steps)
    for _ in range(steps):
        logits = model(big_x + delta.repeat_interleave(m, dim=0) + noise_em)
        avg = F.softmax(logits, 1).reshape(-1, m, 3).mean(1)
        loss = -F.nll_loss(torch.log(avg.clamp(min=1e-20)), y)
        opt.zero_grad()
        loss.backward()
        delta.grad /= row_norms(delta.grad)[:, None]
        opt.step()
        with torch.no_grad():
            delta.copy_((x + delta).clamp(0, 1) - x)
            delta.copy_(delta.renorm(2, 0, eps))
    torch.testing.assert_close(out, x + delta.detach())


def test_pgd_zero_gradient_rows_use_random_direction():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.w.expand(x.shape[0], 3) + 0 * x.sum(1, keepdim=True)

    x = torch.full((2, 4), 0.5)
    y = torch.tensor([0, 1])
    directions = torch.tensor([[[0.1, 0.0, 0.0, 0.0], [0.0, -0.2, 0.0, 0.0]]])
    out = smooth_pgd_attack(
        Constant(), x, y, torch.zeros(2, 4), 1.0, 1, random_directions=directions
    )
    # step 2*eps/T = 2, moving along -r, then box then ball projections
    expected = x - 2 * directions[0]
    torch.testing.assert_close(out, expected)


def test_ddn_returns_clean_when_never_adversarial():
    class AlwaysRight(nn.Module):
        def forward(self, x):
            return torch.stack([10 + 0 * x.sum(1), 0 * x.sum(1)], 1)

    x = torch.full((3, 4), 0.5)
    out = smooth_ddn_attack(
        AlwaysRight(),
        x,
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, 4),
        1.0,
        5,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(out, x)


def test_ddn_finds_small_adversarial_on_linear_model(generator):
    w = torch.tensor([1.0, -1.0, 0.5, 0.0])
    model = LinearTwoClass(w, -0.1)
    x = torch.tensor([[0.6, 0.4, 0.5, 0.5], [0.7, 0.3, 0.5, 0.5]])
    y = torch.zeros(2, dtype=torch.long)  # both classified 0 (score > 0)
    attack = SmoothDDNAttack(0.01, 2.0, 50, 1, init_norm=0.5, quantize=False, generator=generator)
    x_adv = attack(model, x, y)
    # the distance to the boundary is (w.x + b) / ||w||; DDN ends (almost) on the boundary
    with torch.no_grad():
        margin = (x @ w - 0.1) / w.norm()
        assert bool(((x_adv @ w - 0.1).abs() / w.norm() < 0.02).all())
    assert bool((row_norms(x_adv - x) < margin + 0.1).all())


def test_ddn_ball_without_quantization(generator):
    model = small_mlp(6, 3).eval()
    x = torch.rand(6, 6, generator=generator)
    y = torch.arange(6) % 3
    x_adv = SmoothDDNAttack(0.5, 0.2, 10, 2, quantize=False, generator=generator)(model, x, y)
    assert bool((row_norms(x_adv - x) <= 0.2 + 1e-6).all())


# ------------------------------------------- issue 20, item 6: DDN's output stays in the ball


def test_ddn_quantized_output_stays_in_the_ball():
    # the case: 8-bit inputs, quantize=True, epsilon = 0.25; the official rounding put
    # several rows outside the ball (up to 0.2559)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x = torch.randint(0, 256, (40, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 255
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(1))
    attack = SmoothDDNAttack(0.25, 0.25, 10, 4, generator=torch.Generator().manual_seed(0))
    x_adv = attack(model, x, y)
    assert bool((row_norms(x_adv - x) <= 0.25 + 1e-6).all())
    assert bool(((x_adv * 255 - (x_adv * 255).round()).abs() < 1e-4).all())  # still 8-bit
    assert bool((row_norms(x_adv - x) > 0.2).any())  # the attack did move rows to the ball


@settings(max_examples=40, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    epsilon=st.floats(0.0, 2.0),
    quantize=st.booleans(),
    on_grid=st.booleans(),
    init_norm=st.floats(0.05, 3.0),
)
def test_ddn_output_always_in_ball_and_box_property(seed, epsilon, quantize, on_grid, init_norm):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 4))
    x = torch.rand(8, 2, 4, 4, generator=g)
    x = (x * 255).round() / 255 if on_grid else x
    y = torch.randint(0, 4, (8,), generator=g)
    attack = SmoothDDNAttack(
        0.25, epsilon, 6, 2, init_norm=init_norm, quantize=quantize, generator=g
    )
    x_adv = attack(model, x, y)
    assert bool((row_norms(x_adv - x) <= epsilon + 1e-6).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


# ----------------------------------------------------------------------------- shared properties


@pytest.mark.parametrize("name", list(ATTACKS))
def test_outputs_in_box(name, generator):
    model = small_mlp(6, 3).eval()
    x = torch.rand(8, 6, generator=generator).round()
    x_adv = ATTACKS[name](generator)(model, x, torch.arange(8) % 3)
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0
    assert float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("name", list(ATTACKS))
def test_same_noise_at_every_step(name):
    spy = Spy(small_mlp(6, 3))
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    ATTACKS[name](torch.Generator().manual_seed(7))(spy, x, torch.tensor([0, 1, 2, 0]))
    noise = sample_noise(x, 0.25, 2, generator=torch.Generator().manual_seed(7))
    assert len(spy.seen) == 3
    torch.testing.assert_close(spy.seen[0] - noise, x.repeat(2, 1))
    for z in spy.seen:
        points = (z - noise).reshape(2, 4, 6)  # noise-major copies of the current point
        torch.testing.assert_close(points[0], points[1])


@pytest.mark.parametrize("name", ["unrestricted", "pgd"])
def test_attack_increases_smoothed_loss_on_linear_model(name, generator):
    w = torch.linspace(-1, 1, 6)
    model = LinearTwoClass(w, 0.0)
    x = interior((10, 6), generator)
    y = (x @ w < 0).long()  # correctly classified
    attack = ATTACKS[name](torch.Generator().manual_seed(3))
    x_adv = attack(model, x, y)
    noise = sample_noise(x, 0.25, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = smoothed_nll(model, x, y, noise)
        after = smoothed_nll(model, x_adv, y, noise)
    assert bool((after > before).all())


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("fail_on_call", [None, 2])
def test_model_state_restored(name, fail_on_call):
    model = MixedModel(fail_on_call)
    before = state_of(model)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    attack = ATTACKS[name]()
    if fail_on_call is None:
        attack(model, x, torch.tensor([0, 1, 2, 0]))
    else:
        with pytest.raises(RuntimeError, match="boom"):
            attack(model, x, torch.tensor([0, 1, 2, 0]))
    assert state_of(model) == before
    assert all(seen == ({False}, True) for seen in model.seen_state)  # eval + frozen inside
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", list(ATTACKS))
def test_no_grad_into_parameters_and_detached(name):
    model = small_mlp(6, 3)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    x_adv = ATTACKS[name]()(model, x, torch.tensor([0, 1, 2, 0]))
    assert not x_adv.requires_grad
    assert x.grad is None
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # also usable for evaluation under no_grad
        assert ATTACKS[name]()(model, x, torch.tensor([0, 1, 2, 0])).shape == x.shape


@pytest.mark.parametrize("name", list(ATTACKS))
def test_seeded_reproducibility(name):
    w = torch.linspace(-1, 1, 6)
    model = LinearTwoClass(w, 0.0)
    x = interior((4, 6), torch.Generator().manual_seed(0))
    y = (x @ w < 0).long()
    a = ATTACKS[name](torch.Generator().manual_seed(5))(model, x, y)
    b = ATTACKS[name](torch.Generator().manual_seed(5))(model, x, y)
    c = ATTACKS[name](torch.Generator().manual_seed(6))(model, x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("kind", ["2d", "4d"])
def test_2d_and_4d_inputs(name, kind, device):
    g = torch.Generator().manual_seed(0)
    if kind == "2d":
        model, x = small_mlp(6, 3), torch.rand(4, 6, generator=g)
    else:
        model, x = small_cnn(3), torch.rand(4, 1, 8, 8, generator=g)
    model, x = model.to(device), x.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x_adv = ATTACKS[name](gen)(model, x, torch.tensor([0, 1, 2, 0], device=device))
    assert x_adv.shape == x.shape
    assert x_adv.device == x.device


def test_module_matches_functional(generator):
    model = small_mlp(6, 3)
    x = torch.rand(4, 6, generator=generator)
    y = torch.tensor([0, 1, 2, 0])
    attack = UnrestrictedSmoothAttack(0.25, 0.3, 3, 2, generator=torch.Generator().manual_seed(1))
    x_adv = attack(model, x, y)
    noise = sample_noise(x, 0.25, 2, generator=torch.Generator().manual_seed(1))
    model.eval()
    x1, xt = unrestricted_smooth_attack(model, x, y, noise, 0.3, 3)
    assert torch.equal(x_adv, xt)
    assert torch.equal(attack.last_one_step, x1)


def test_repr_and_pickle():
    attack = SmoothPGDAttack(0.5, 1.0, 2, generator=torch.Generator())
    assert repr(attack) == "SmoothPGDAttack(sigma=0.5, epsilon=1.0, num_steps=2, num_noise=1)"
    clone = copy.deepcopy(attack)
    assert clone.epsilon == 1.0


# ----------------------------------------------------------------------------- errors

X = torch.full((2, 6), 0.5)
Y = torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("factory", "kwargs", "exc", "match"),
    [
        (UnrestrictedSmoothAttack, {"sigma": 0.0}, ValueError, "sigma must be positive"),
        (UnrestrictedSmoothAttack, {"sigma": "a"}, TypeError, "sigma must be a real number"),
        (UnrestrictedSmoothAttack, {"step_size": -1.0}, ValueError, "step_size must be positive"),
        (UnrestrictedSmoothAttack, {"num_steps": 0}, ValueError, "num_steps must be a positive"),
        (UnrestrictedSmoothAttack, {"num_steps": 1.5}, TypeError, "num_steps must be an integer"),
        (UnrestrictedSmoothAttack, {"num_noise": 0}, ValueError, "num_noise must be a positive"),
        (UnrestrictedSmoothAttack, {"max_norm": 0.0}, ValueError, "max_norm must be positive"),
        (UnrestrictedSmoothAttack, {"one_step_max_norm": -1.0}, ValueError, "one_step_max_norm"),
        (UnrestrictedSmoothAttack, {"generator": 3}, TypeError, "generator must be a torch"),
        (SmoothPGDAttack, {"sigma": -1.0}, ValueError, "sigma must be positive"),
        (SmoothPGDAttack, {"epsilon": -0.1}, ValueError, "epsilon must be non-negative"),
        (SmoothPGDAttack, {"epsilon": float("nan")}, ValueError, "epsilon must be non-negative"),
        (SmoothPGDAttack, {"num_steps": 0}, ValueError, "num_steps must be a positive"),
        (SmoothPGDAttack, {"num_noise": True}, TypeError, "num_noise must be an integer"),
        (SmoothPGDAttack, {"generator": "g"}, TypeError, "generator must be a torch"),
        (SmoothDDNAttack, {"epsilon": -1.0}, ValueError, "epsilon must be non-negative"),
        (SmoothDDNAttack, {"gamma": 1.0}, ValueError, r"gamma must be in \[0, 1\)"),
        (SmoothDDNAttack, {"gamma": -0.1}, ValueError, "gamma must be non-negative"),
        (SmoothDDNAttack, {"init_norm": -1.0}, ValueError, "init_norm must be non-negative"),
        (SmoothDDNAttack, {"quantize": 1}, TypeError, "quantize must be a bool"),
        (SmoothDDNAttack, {"num_steps": 0}, ValueError, "num_steps must be a positive"),
    ],
)
def test_constructor_errors(factory, kwargs, exc, match):
    base = (
        {"sigma": 0.5, "step_size": 1.0, "num_steps": 2, "num_noise": 2}
        if factory is UnrestrictedSmoothAttack
        else {"sigma": 0.5, "epsilon": 0.5, "num_steps": 2}
    )
    with pytest.raises(exc, match=match):
        factory(**{**base, **kwargs})


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        (("model", X + 0.6, Y), ValueError, r"inputs must lie in \[0, 1\]"),
        (("model", X - 0.6, Y), ValueError, r"inputs must lie in \[0, 1\]"),
        (("model", X.long(), Y), TypeError, "inputs must be a floating-point tensor"),
        (("model", X, Y[:1]), ValueError, "targets must have shape"),
        (("model", X, Y.float()), TypeError, "targets must be an integer tensor"),
        ((None, X, Y), TypeError, "model must be a torch.nn.Module"),
    ],
)
def test_call_errors(name, args, exc, match):
    model = small_mlp(6, 3)
    args = tuple(model if a == "model" else a for a in args)
    with pytest.raises(exc, match=match):
        ATTACKS[name]()(*args)


def test_epsilon_attribute_validated_on_assignment():
    attack = SmoothPGDAttack(0.5, 0.5, 2)
    with pytest.raises(ValueError, match="epsilon must be non-negative"):
        attack.epsilon = -1.0
    assert attack.epsilon == 0.5
    assert attack(small_mlp(6, 3), X, Y).shape == X.shape


# ---------------------------------------------- issue 20, item 7: hyperparameters on assignment
ALL_ATTACKS = {
    **ATTACKS,
    "catrs-noise": lambda g=None: CATRSNoiseAttack(0.25, 1.0, 2, 2, generator=g),
    "adaptive-noise": lambda g=None: AdaptiveNoiseAttack(0.25, 0.25, 2, 2, generator=g),
}

# (attack, attribute, value, exception, message): the constructor's checks, on assignment
ASSIGNMENTS = [
    ("unrestricted", "sigma", -0.5, ValueError, "sigma must be positive and finite, got -0.5"),
    ("unrestricted", "step_size", -1, ValueError, "step_size must be positive and finite, got -1"),
    ("unrestricted", "num_steps", 2.5, TypeError, "num_steps must be an integer, got float"),
    ("unrestricted", "num_noise", 0, ValueError, "num_noise must be a positive integer, got 0"),
    ("unrestricted", "max_norm", -1.0, ValueError, "max_norm must be positive"),
    ("unrestricted", "one_step_max_norm", "1", TypeError, "one_step_max_norm must be a real"),
    ("pgd", "epsilon", float("inf"), ValueError, "epsilon must be non-negative and finite"),
    ("pgd", "generator", 0, TypeError, "generator must be a torch.Generator, got int"),
    ("ddn", "gamma", 1.5, ValueError, r"gamma must be in \[0, 1\), got 1.5"),
    ("ddn", "init_norm", -0.5, ValueError, "init_norm must be non-negative"),
    ("ddn", "quantize", "yes", TypeError, "quantize must be a bool, got str"),
    ("catrs-noise", "epsilon", 0.0, ValueError, "epsilon must be positive and finite, got 0.0"),
    ("catrs-noise", "num_steps", -1, ValueError, "num_steps must be an integer >= 0, got -1"),
    ("adaptive-noise", "num_noise", 1.0, TypeError, "num_noise must be an integer, got float"),
    ("adaptive-noise", "sigma", float("nan"), ValueError, "sigma must be positive and finite"),
]


@pytest.mark.parametrize(("name", "attribute", "value", "exc", "match"), ASSIGNMENTS)
def test_assignment_is_checked_and_keeps_the_old_value(name, attribute, value, exc, match):
    attack = ALL_ATTACKS[name]()
    before = getattr(attack, attribute)
    with pytest.raises(exc, match=match):
        setattr(attack, attribute, value)
    assert getattr(attack, attribute) == before


@settings(max_examples=30, deadline=None, database=None)
@given(
    name=st.sampled_from(list(ALL_ATTACKS)),
    value=st.floats(max_value=0.0) | st.just(float("nan")) | st.just(float("inf")),
)
def test_any_non_positive_sigma_assignment_is_refused(name, value):
    attack = ALL_ATTACKS[name]()
    with pytest.raises(ValueError, match="sigma must be positive"):
        attack.sigma = value
    assert attack.sigma == 0.25


def test_settings_survive_deepcopy_pickle_and_repr():
    import pickle

    attack = SmoothDDNAttack(0.25, 0.5, 3, 2, generator=torch.Generator())
    attack.gamma = 0.1
    for clone in (copy.deepcopy(attack), pickle.loads(pickle.dumps(attack))):
        assert repr(clone) == repr(attack)
        assert clone.gamma == 0.1 and clone.generator is None
        with pytest.raises(ValueError, match="gamma must be"):
            clone.gamma = 2.0
    assert attack.state_dict() == {}


# ---------------------------------------------- issue 20, item 9 and labels: call mistakes
def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _call(name, attack, model, inputs, labels):
    if name == "catrs-noise":  # its targets are per-class distributions
        return attack(model, inputs, torch.full((len(labels), 3), 1 / 3))
    return attack(model, inputs, labels)


@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_unbatched_image_gets_the_unsqueeze_hint(name):
    image = torch.rand(3, 8, 8)  # one CHW image, read as a batch of 3
    with pytest.raises(ValueError, match=r"inputs\.unsqueeze\(0\).*the model raised"):
        _call(name, ALL_ATTACKS[name](), _conv_model(), image, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("name", [n for n in ALL_ATTACKS if n != "catrs-noise"])
def test_unbatched_image_with_one_label_gets_the_hint(name):
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\).*unsqueeze\(0\)"):
        ALL_ATTACKS[name]()(_conv_model(), torch.rand(3, 8, 8), torch.tensor([1]))


@pytest.mark.parametrize("name", [n for n in ALL_ATTACKS if n != "catrs-noise"])
@pytest.mark.parametrize("label", [3, 10])
def test_labels_out_of_range_name_the_number_of_logits(name, label):
    model = small_mlp(6, 3)
    message = rf"targets must be class indices in \[0, 3\) for a model with 3 logits, got the label {label}"
    with pytest.raises(ValueError, match=message):
        ALL_ATTACKS[name]()(model, X, torch.tensor([0, label]))
    assert not model._forward_hooks
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_catrs_noise_targets_need_one_column_per_class():
    with pytest.raises(
        ValueError, match=r"targets must have one column per class of the model \(3 logits\), got 4"
    ):
        CATRSNoiseAttack(0.25, 1.0, 2, 2)(small_mlp(6, 3), X, torch.full((2, 4), 0.25))


@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_a_smoothed_classifier_is_refused_with_the_fix(name):
    from rsmooth import SmoothedClassifier

    smoothed = SmoothedClassifier(small_mlp(6, 3), sigma=0.25)
    with pytest.raises(TypeError, match=r"pass smoothed\.model, and sigma=smoothed\.sigma"):
        _call(name, ALL_ATTACKS[name](), smoothed, X, Y)


@pytest.mark.parametrize("name", list(ALL_ATTACKS))
@pytest.mark.parametrize(("kind", "match"), [("tuple", r"got a tuple"), ("dict", r"got a dict")])
def test_non_tensor_outputs_get_a_hint(name, kind, match):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = small_mlp(6, 3)

        def forward(self, x):
            logits = self.inner(x)
            return (logits, x) if kind == "tuple" else {"logits": logits}

    model = Wrapped()
    with pytest.raises(TypeError, match=match):
        _call(name, ALL_ATTACKS[name](), model, X, Y)
    assert not model._forward_hooks


@pytest.mark.parametrize("fn", [smooth_pgd_attack, smooth_ddn_attack])
def test_functional_noise_shape_error(fn):
    with pytest.raises(ValueError, match="noise must have shape"):
        fn(small_mlp(6, 3), X, Y, torch.zeros(3, 6), 0.5, 1)


def test_functional_unrestricted_noise_shape_error():
    with pytest.raises(ValueError, match="noise must have shape"):
        unrestricted_smooth_attack(small_mlp(6, 3), X, Y, torch.zeros(2, 5), 0.5, 1)


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(max_value=0.0, allow_nan=False, allow_infinity=False))
def test_nonpositive_sigma_rejected_property(sigma):
    for factory in (
        lambda: UnrestrictedSmoothAttack(sigma, 1.0, 1, 1),
        lambda: SmoothPGDAttack(sigma, 1.0, 1),
        lambda: SmoothDDNAttack(sigma, 1.0, 1),
    ):
        with pytest.raises(ValueError, match="sigma must be positive"):
            factory()


@settings(max_examples=25, deadline=None)
@given(
    epsilon=st.floats(min_value=0.0, max_value=1e6),
    step=st.floats(min_value=1e-6, max_value=1e6),
)
def test_valid_radii_accepted_property(epsilon, step):
    assert SmoothPGDAttack(0.5, epsilon, 1).epsilon == epsilon
    assert SmoothDDNAttack(0.5, epsilon, 1).epsilon == epsilon
    assert UnrestrictedSmoothAttack(0.5, step, 1, 1).step_size == step


# ---------------------------------------------- issue 20, item 4: the research code's epsilon flags
@pytest.mark.parametrize("factory", [SmoothPGDAttack, SmoothDDNAttack])
@pytest.mark.parametrize("flag", [127, 255, 512])
def test_an_integer_epsilon_flag_is_refused_with_its_meaning(factory, flag):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    message = rf"got {flag}: epsilon is an L2 radius in input units.*epsilon={flag / 256:.6g}"
    with pytest.raises(ValueError, match=message):
        factory(0.5, flag, 2, 2)(model, x, y)
    assert factory(0.5, flag / 256, 2, 2)(model, x, y).shape == x.shape


def test_adaptive_noise_epsilon_is_a_step_length_not_checked_against_the_box():
    # Sun et al.'s --epsilon is a raw step on the sphere of the noise's norm, not a /256 flag
    attack = AdaptiveNoiseAttack(0.25, 100.0, 1, 1)
    assert attack(small_mlp(6, 3), X, Y).shape == (2, 6)


# ---------------------------------------------- issue 20: one positional order for every attack
@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_one_positional_order_for_every_attack(name):
    import inspect

    positional = [
        n
        for n, p in inspect.signature(type(ALL_ATTACKS[name]()).__init__).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and n != "self"
    ]
    assert positional[0] == "sigma" and positional[1] in ("epsilon", "step_size")
    assert positional[2:] == ["num_steps", "num_noise"]
