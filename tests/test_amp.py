"""Every criterion and attack under ``torch.autocast`` on CPU (bfloat16, and float16 where the
CPU supports it).

Tolerance. With ``torch.autocast("cpu", dtype=torch.bfloat16)`` the convolutions and matrix
products round their inputs to bfloat16 (8 significant bits, unit roundoff 2**-9) and
accumulate in float32; rsmooth then does the loss maths (softmax normalisations, logs, KL terms,
the inverse normal CDF, gradient norms) in float32. The logits' rounding errors average out over
the dot products, so the loss of these tiny models stays within a few 1e-4 of float32 (measured:
at most 4e-4 relative over 8 seeds). We require a relative error below 2**-9 ~= 1.95e-3, i.e.
the loss must be more accurate than a bfloat16 number can be: a loss computed *in* bfloat16
(the bug this guards against: MACER's softmax and Phi^-1 in bfloat16) fails it. Gradients go
through the same bfloat16 products, so only their direction is compared (cosine >= 0.995, about
6 degrees; measured >= 0.9995).
"""

from __future__ import annotations

import math

import pytest
import torch
from criteria_table import ATTACKS, CRITERIA, missing_attacks, missing_criteria
from torch import nn

from rsmooth.functional import sample_noise, soft_smoothed_probs

LOSS_RTOL = 2.0**-9  # half a bfloat16 ulp, see the module docstring
GRAD_MIN_COSINE = 0.995


def _cnn(seed: int, *, logit_spread: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)  # tests may seed globally; the library never does
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )
    if logit_spread:
        with torch.no_grad():
            model[-1].bias.copy_(torch.linspace(-logit_spread / 2, logit_spread / 2, 10))
    return model


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    return torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _cpu_fp16_autocast_supported() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float16
    except (RuntimeError, ValueError):
        return False
    except UserWarning:  # filterwarnings = error turns "not supported, disabling" into this
        return False


def test_every_criterion_and_attack_has_an_entry():
    assert missing_criteria() == [], "add them to tests/criteria_table.py::CRITERIA"
    assert missing_attacks() == [], "add them to tests/criteria_table.py::ATTACKS"


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criterion_under_bfloat16_autocast_matches_float32(name):
    entry = CRITERIA[name]
    for seed in range(2):
        x, y = _batch(seed)
        model = _cnn(seed)
        reference = entry.call(entry.make(torch.Generator().manual_seed(seed)), model, x, y)
        reference.backward()
        grad_ref = _flat_grad(model)
        model.zero_grad(set_to_none=True)

        criterion = entry.make(torch.Generator().manual_seed(seed))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = entry.call(criterion, model, x, y)
        assert loss.dtype == torch.float32, "the loss maths must run in float32"
        assert torch.isfinite(loss)
        assert all(math.isfinite(v) for v in getattr(criterion, "last_terms", {}).values())
        rel = abs(loss.item() - reference.item()) / abs(reference.item())
        assert rel < LOSS_RTOL, f"{name} seed {seed}: relative error {rel:.2e} vs float32"
        loss.backward()
        grad = _flat_grad(model)
        assert torch.isfinite(grad).all()
        cosine = nn.functional.cosine_similarity(grad, grad_ref, dim=0).item()
        assert cosine >= GRAD_MIN_COSINE, f"{name} seed {seed}: gradient cosine {cosine:.5f}"


@pytest.mark.skipif(not _cpu_fp16_autocast_supported(), reason="no float16 autocast on this CPU")
@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criterion_under_float16_autocast_with_saturated_logits_is_finite(name):
    # Logits spread over ~+-30: the smallest softmax entries (~e^-60) are 0 in float16, and the
    # 1e-10 / 1e-20 guards inside the criteria underflow to 0 in float16 too. Computed in
    # float16, MACER's -log(p + 1e-10) and the entropy's p log max(p, 1e-20) are inf or nan.
    entry = CRITERIA[name]
    x, y = _batch(0)
    model = _cnn(0, logit_spread=60.0)
    with torch.no_grad():
        spread = model(x).max(1).values - model(x).min(1).values
    assert spread.min() > 50, "the test needs saturated logits"
    criterion = entry.make(torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = entry.call(criterion, model, x, y)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(_flat_grad(model)).all()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_under_bfloat16_autocast(name):
    entry = ATTACKS[name]
    for seed in range(2):
        x, _ = _batch(seed)
        model = _cnn(seed)
        with torch.no_grad():  # attack the model's own (clean) predictions: there is work to do
            y = model(x).argmax(1)
        reference = entry.call(entry.make(torch.Generator().manual_seed(seed)), model, x, y)
        attack = entry.make(torch.Generator().manual_seed(seed))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = entry.call(attack, model, x, y)
        assert out.dtype == x.dtype
        assert out.shape == reference.shape
        assert torch.isfinite(out).all()
        if entry.noise:  # adversarial noise; it starts from the generator's first draw
            start = sample_noise(
                x, attack.sigma, attack.num_noise, generator=torch.Generator().manual_seed(seed)
            )
        else:  # adversarial inputs, in the box (and the ball) around x
            start = x
            assert out.min() >= 0 and out.max() <= 1
            if hasattr(attack, "epsilon"):
                assert ((out - x).flatten(1).norm(dim=1) <= attack.epsilon + 1e-2).all()
        # The iterates follow normalised gradients that differ by a few percent under bfloat16;
        # over T steps the endpoints drift apart by up to ~9% of the perturbation (measured on
        # 8 seeds). Summed over the batch, 0.25 allows for that (and for a row whose early stop
        # flips by one step) and still fails on a broken direction.
        moved = (reference - start).norm()
        drift = (out - reference).norm()
        assert moved > 0
        assert drift <= 0.25 * moved + 1e-6, (
            f"{name}: drift {drift:.3g} vs perturbation {moved:.3g}"
        )
        for p in model.parameters():
            assert p.grad is None


def test_soft_smoothed_probs_are_float32_under_autocast():
    x, _ = _batch(0)
    model = _cnn(0)
    noise = sample_noise(x, 0.5, 4, generator=torch.Generator().manual_seed(0))
    reference = soft_smoothed_probs(model, x, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = soft_smoothed_probs(model, x, noise)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(6), rtol=0, atol=1e-6)
    torch.testing.assert_close(probs, reference, rtol=0, atol=1e-2)


def test_float64_logits_are_not_downcast():
    x, y = _batch(0)
    model = _cnn(0).double()
    criterion = CRITERIA["macer"].make(torch.Generator().manual_seed(0))
    assert criterion(model, x.double(), y).dtype == torch.float64
