from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import ConsistencyLoss, GaussianAugmentationLoss
from rsmooth.functional import consistency_loss, gaussian_augmentation_loss, sample_noise


def _softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def _reference(model, x, y, noise):
    """Plain loop: mean CE over copies, mean KL(p_hat || p_i), mean entropy of p_hat."""
    batch = x.shape[0]
    m = noise.shape[0] // batch
    natural = consistency = entropy = 0.0
    for j in range(batch):
        ps = [
            _softmax(model((x[j] + noise[i * batch + j]).unsqueeze(0))[0].tolist())
            for i in range(m)
        ]
        num_classes = len(ps[0])
        p_hat = [sum(p[k] for p in ps) / m for k in range(num_classes)]
        for p in ps:
            natural += -math.log(p[int(y[j])])
            consistency += (
                sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_hat, p, strict=True)) / m
            )
        entropy += -sum(a * math.log(max(a, 1e-20)) for a in p_hat)
    return natural / (m * batch), consistency / batch, entropy / batch


def _setup(dtype=torch.float64, m=3):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(dtype)
    with torch.no_grad():
        model.weight.mul_(3.0)
    x, y = torch.rand(5, 4, dtype=dtype), torch.tensor([0, 1, 2, 2, 1])
    noise = 0.5 * torch.randn(m * 5, 4, dtype=dtype)
    return model, x, y, noise


def test_reference_value() -> None:
    model, x, y, noise = _setup()
    with torch.no_grad():
        terms = consistency_loss(model, x, y, noise, 10.0, 0.5)
        natural, consistency, entropy = _reference(model, x, y, noise)
    assert consistency > 1e-3
    assert terms.natural.item() == pytest.approx(natural, rel=1e-12)
    assert terms.consistency.item() == pytest.approx(consistency, rel=1e-10)
    assert terms.entropy.item() == pytest.approx(entropy, rel=1e-12)
    expected = natural + 10.0 * consistency + 0.5 * entropy
    assert terms.loss.item() == pytest.approx(expected, rel=1e-12)


def test_module_matches_functional_on_the_same_noise() -> None:
    model, x, y, _ = _setup(torch.float32)
    criterion = ConsistencyLoss(0.25, 3, 5.0, 0.1, generator=torch.Generator().manual_seed(9))
    loss = criterion(model, x, y)
    noise = sample_noise(x, 0.25, 3, generator=torch.Generator().manual_seed(9))
    terms = consistency_loss(model, x, y, noise, 5.0, 0.1)
    assert torch.equal(loss, terms.loss)
    assert criterion.last_terms == {
        "natural": terms.natural.item(),
        "consistency": terms.consistency.item(),
        "entropy": terms.entropy.item(),
    }


def test_zero_weights_is_gaussian_augmentation_with_m_copies() -> None:
    model, x, y, noise = _setup()
    terms = consistency_loss(model, x, y, noise, 0.0, 0.0)
    assert torch.equal(terms.loss, gaussian_augmentation_loss(model, x, y, noise).loss)

    model = model.float()
    x = x.float()
    losses = [
        make(0.5, 3, generator=torch.Generator().manual_seed(4))(model, x, y)
        for make in (
            lambda *a, **kw: ConsistencyLoss(*a, lbd=0.0, eta=0.0, **kw),
            GaussianAugmentationLoss,
        )
    ]
    assert torch.equal(losses[0], losses[1])


def test_gradcheck() -> None:
    model, _, y, noise = _setup(m=2)
    x = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    weight = model.weight.detach().clone().requires_grad_(True)

    def fn(inputs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def f(z: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {"weight": w, "bias": model.bias}, (z,))

        return consistency_loss(f, inputs, y, noise, 10.0, 0.5).loss  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (x, weight))


def test_undetached_target_contributes_to_the_gradient() -> None:
    model, x, y, noise = _setup()

    def grads(detach_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        terms = consistency_loss(model, x, y, noise, 10.0, 0.5, detach_target=detach_target)
        terms.loss.backward()
        return terms.loss.detach(), model.weight.grad.clone()

    loss_undetached, grad_undetached = grads(False)
    loss_detached, grad_detached = grads(True)
    assert torch.equal(loss_undetached, loss_detached)
    assert not torch.allclose(grad_undetached, grad_detached)

    # The difference is exactly the gradient through p_hat in its role as the KL target.
    model.zero_grad()
    logits = model(x.repeat(3, 1) + noise).reshape(3, 5, 3)
    p_hat = logits.softmax(-1).mean(0)
    log_p = logits.log_softmax(-1).detach()
    (10.0 * (p_hat * (p_hat.log() - log_p)).sum(-1).mean()).backward()
    assert torch.allclose(grad_undetached - grad_detached, model.weight.grad)


def test_module_detach_target_option() -> None:
    model, x, y, _ = _setup(torch.float32)
    grads = []
    for detach_target in (False, True):
        model.zero_grad()
        criterion = ConsistencyLoss(
            0.5, detach_target=detach_target, generator=torch.Generator().manual_seed(0)
        )
        criterion(model, x, y).backward()
        grads.append(model.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_state_restored(checks) -> None:
    checks.state_restored(lambda **kw: ConsistencyLoss(0.25, **kw))
    checks.runs_in_current_mode(lambda **kw: ConsistencyLoss(0.25, **kw))


def test_reproducible(checks) -> None:
    checks.reproducible(lambda **kw: ConsistencyLoss(0.25, **kw))


def test_shapes(checks) -> None:
    checks.shapes(lambda **kw: ConsistencyLoss(0.25, **kw))


def test_repr_and_terms() -> None:
    criterion = ConsistencyLoss(0.5)
    assert repr(criterion) == (
        "ConsistencyLoss(sigma=0.5, num_noise=2, lbd=10.0, eta=0.5, detach_target=False)"
    )
    assert criterion.term_names == ("natural", "consistency", "entropy")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be positive and finite, got 0.0"),
        ({"sigma": [0.5]}, TypeError, "sigma must be a real number, got list"),
        ({"sigma": 0.5, "num_noise": 1}, ValueError, "num_noise must be an integer >= 2, got 1"),
        ({"sigma": 0.5, "num_noise": "2"}, TypeError, "num_noise must be an integer, got str"),
        ({"sigma": 0.5, "lbd": -10}, ValueError, "lbd must be non-negative and finite, got -10.0"),
        ({"sigma": 0.5, "eta": -0.5}, ValueError, "eta must be non-negative and finite, got -0.5"),
        ({"sigma": 0.5, "eta": float("inf")}, ValueError, "eta must be non-negative and finite"),
        ({"sigma": 0.5, "detach_target": None}, TypeError, "detach_target must be a bool"),
        ({"sigma": 0.5, "generator": 3}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_constructor_errors(kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        ConsistencyLoss(**kwargs)


def test_functional_errors() -> None:
    model, x, y, noise = _setup()
    with pytest.raises(ValueError, match="noise must have shape"):
        consistency_loss(model, x, y, noise[:7], 10.0, 0.5)
    with pytest.raises(ValueError, match="eta must be non-negative"):
        consistency_loss(model, x, y, noise, 10.0, -1.0)


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(max_value=0.0) | st.just(float("nan")))
def test_any_non_positive_sigma_is_rejected(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma must be positive"):
        ConsistencyLoss(sigma)


@settings(max_examples=25, deadline=None, database=None)
@given(st.integers(max_value=1))
def test_fewer_than_two_copies_are_rejected(num_noise: int) -> None:
    with pytest.raises(ValueError, match="num_noise must be an integer >= 2"):
        ConsistencyLoss(0.5, num_noise)


def test_smoke_digits(checks, digits) -> None:
    checks.smoke(lambda **kw: ConsistencyLoss(0.25, **kw), digits)
