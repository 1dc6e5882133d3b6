from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import StabilityLoss
from rsmooth.functional import sample_noise, stability_loss


def _softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def _reference(model: nn.Module, x, y, noise, lbd: float) -> tuple[float, float]:
    """Plain loop: clean CE and the clean-to-noisy soft cross-entropy."""
    natural = stability = 0.0
    for j in range(x.shape[0]):
        p = _softmax(model(x[j : j + 1])[0].tolist())
        q = _softmax(model(x[j : j + 1] + noise[j : j + 1])[0].tolist())
        natural += -math.log(p[int(y[j])])
        stability += -sum(pk * math.log(qk) for pk, qk in zip(p, q, strict=True))
    batch = x.shape[0]
    return natural / batch, stability / batch


def _setup(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(dtype)
    x, y = torch.rand(5, 4, dtype=dtype), torch.tensor([0, 1, 2, 2, 1])
    noise = 0.5 * torch.randn(5, 4, dtype=dtype)
    return model, x, y, noise


def test_reference_value() -> None:
    model, x, y, noise = _setup()
    with torch.no_grad():
        terms = stability_loss(model, x, y, noise, 2.0)
        natural, stability = _reference(model, x, y, noise, 2.0)
    assert terms.natural.item() == pytest.approx(natural, rel=1e-12)
    assert terms.stability.item() == pytest.approx(stability, rel=1e-12)
    assert terms.loss.item() == pytest.approx(natural + 2.0 * stability, rel=1e-12)


def test_module_matches_functional_on_the_same_noise() -> None:
    model, x, y, _ = _setup(torch.float32)
    criterion = StabilityLoss(0.25, lbd=3.0, generator=torch.Generator().manual_seed(5))
    loss = criterion(model, x, y)
    noise = sample_noise(x, 0.25, 1, generator=torch.Generator().manual_seed(5))
    terms = stability_loss(model, x, y, noise, 3.0)
    assert torch.equal(loss, terms.loss)
    assert criterion.last_terms == {
        "natural": terms.natural.item(),
        "stability": terms.stability.item(),
    }


def test_zero_noise_is_cross_entropy_plus_entropy() -> None:
    model, x, y, _ = _setup()
    terms = stability_loss(model, x, y, torch.zeros_like(x), 2.0)
    logits = model(x)
    p = logits.softmax(1)
    entropy = -(p * p.log()).sum(1).mean()
    expected = nn.functional.cross_entropy(logits, y) + 2.0 * entropy
    assert torch.allclose(terms.loss, expected)


def test_lbd_zero_is_clean_cross_entropy() -> None:
    model, x, y, noise = _setup()
    terms = stability_loss(model, x, y, noise, 0.0)
    assert torch.allclose(terms.loss, nn.functional.cross_entropy(model(x), y))


def test_gradcheck() -> None:
    # Only the undetached objective is a true function of its inputs (detach changes the
    # analytical gradient by design), so that is the one gradcheck can verify.
    model, _, y, noise = _setup()
    x = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    weight = model.weight.detach().clone().requires_grad_(True)

    def fn(inputs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def f(z: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {"weight": w, "bias": model.bias}, (z,))

        return stability_loss(f, inputs, y, noise, 2.0).loss  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (x, weight))


def test_undetached_target_contributes_to_the_gradient() -> None:
    model, x, y, noise = _setup()

    def grads(detach_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        terms = stability_loss(model, x, y, noise, 2.0, detach_target=detach_target)
        terms.loss.backward()
        return terms.loss.detach(), model.weight.grad.clone()

    loss_undetached, grad_undetached = grads(False)
    loss_detached, grad_detached = grads(True)
    assert torch.equal(loss_undetached, loss_detached)
    assert not torch.allclose(grad_undetached, grad_detached)

    # The difference is exactly the gradient that flows through softmax(f(x)) as the target.
    model.zero_grad()
    p = model(x).softmax(1)
    log_q = model(x + noise).log_softmax(1).detach()
    (-2.0 * (p * log_q).sum(1).mean()).backward()
    assert torch.allclose(grad_undetached - grad_detached, model.weight.grad)


def test_module_detach_target_option() -> None:
    model, x, y, _ = _setup(torch.float32)
    grads = []
    for detach_target in (False, True):
        model.zero_grad()
        criterion = StabilityLoss(
            0.5, detach_target=detach_target, generator=torch.Generator().manual_seed(0)
        )
        criterion(model, x, y).backward()
        grads.append(model.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_state_restored(checks) -> None:
    checks.state_restored(lambda **kw: StabilityLoss(0.25, **kw))
    checks.runs_in_current_mode(lambda **kw: StabilityLoss(0.25, **kw))


def test_reproducible(checks) -> None:
    checks.reproducible(lambda **kw: StabilityLoss(0.25, **kw))


def test_shapes(checks) -> None:
    checks.shapes(lambda **kw: StabilityLoss(0.25, **kw))


def test_repr_and_terms() -> None:
    criterion = StabilityLoss(0.5)
    assert repr(criterion) == "StabilityLoss(sigma=0.5, lbd=2.0, detach_target=False)"
    assert criterion.term_names == ("natural", "stability")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be positive and finite, got 0.0"),
        ({"sigma": -1}, ValueError, "sigma must be positive and finite, got -1.0"),
        ({"sigma": None}, TypeError, "sigma must be a real number, got NoneType"),
        ({"sigma": 0.5, "lbd": -0.1}, ValueError, "lbd must be non-negative and finite, got -0.1"),
        ({"sigma": 0.5, "lbd": float("nan")}, ValueError, "lbd must be non-negative and finite"),
        ({"sigma": 0.5, "lbd": "2"}, TypeError, "lbd must be a real number, got str"),
        ({"sigma": 0.5, "detach_target": 1}, TypeError, "detach_target must be a bool, got int"),
        ({"sigma": 0.5, "generator": "g"}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_constructor_errors(kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        StabilityLoss(**kwargs)


def test_functional_errors() -> None:
    model, x, y, _ = _setup()
    with pytest.raises(ValueError, match="noise must have the shape of inputs"):
        stability_loss(model, x, y, torch.zeros(10, 4, dtype=torch.float64), 2.0)
    with pytest.raises(ValueError, match="lbd must be non-negative"):
        stability_loss(model, x, y, torch.zeros_like(x), -1.0)


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(max_value=0.0) | st.just(float("nan")))
def test_any_non_positive_sigma_is_rejected(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma must be positive"):
        StabilityLoss(sigma)


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(max_value=0.0, exclude_max=True) | st.just(float("-inf")))
def test_any_negative_lbd_is_rejected(lbd: float) -> None:
    with pytest.raises(ValueError, match="lbd must be non-negative"):
        StabilityLoss(0.5, lbd)


def test_smoke_digits(checks, digits) -> None:
    checks.smoke(lambda **kw: StabilityLoss(0.25, **kw), digits)
