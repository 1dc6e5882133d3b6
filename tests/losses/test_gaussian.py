from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rsmooth import GaussianAugmentationLoss
from rsmooth.functional import gaussian_augmentation_loss, sample_noise


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> float:
    """Plain loop: mean over copies i and inputs j of -log softmax(f(x_j + d_ij))[y_j]."""
    batch = x.shape[0]
    m = noise.shape[0] // batch
    total = 0.0
    for i in range(m):
        for j in range(batch):
            z = model((x[j] + noise[i * batch + j]).unsqueeze(0))[0].tolist()
            total += -(z[int(y[j])] - math.log(sum(math.exp(v) for v in z)))
    return total / (m * batch)


@pytest.mark.parametrize("num_noise", [1, 3])
def test_reference_value(num_noise: int) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.rand(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1])
    noise = 0.5 * torch.randn(num_noise * 5, 4, dtype=torch.float64)
    with torch.no_grad():
        terms = gaussian_augmentation_loss(model, x, y, noise)
        expected = _reference(model, x, y, noise)
    assert terms.loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.equal(terms.loss, terms.natural)


def test_module_matches_functional_on_the_same_noise() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 2, 1])
    criterion = GaussianAugmentationLoss(0.25, 4, generator=torch.Generator().manual_seed(7))
    loss = criterion(model, x, y)
    noise = sample_noise(x, 0.25, 4, generator=torch.Generator().manual_seed(7))
    expected = gaussian_augmentation_loss(model, x, y, noise).loss
    assert torch.equal(loss, expected)
    assert criterion.last_terms["natural"] == pytest.approx(loss.item())


def test_zero_noise_is_cross_entropy() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 2, 1])
    terms = gaussian_augmentation_loss(model, x, y, torch.zeros(10, 4))
    assert torch.allclose(terms.loss, nn.functional.cross_entropy(model(x), y))


def test_gradcheck() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    weight = model.weight.detach().clone().requires_grad_(True)
    y = torch.tensor([0, 2, 1])
    noise = 0.5 * torch.randn(6, 4, dtype=torch.float64)

    def fn(inputs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def f(z: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {"weight": w, "bias": model.bias}, (z,))

        return gaussian_augmentation_loss(f, inputs, y, noise).loss  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (x, weight))


def test_state_restored(checks) -> None:
    checks.state_restored(lambda **kw: GaussianAugmentationLoss(0.25, 2, **kw))
    checks.runs_in_current_mode(lambda **kw: GaussianAugmentationLoss(0.25, 2, **kw))


def test_reproducible(checks) -> None:
    checks.reproducible(lambda **kw: GaussianAugmentationLoss(0.25, 2, **kw))


def test_shapes(checks) -> None:
    checks.shapes(lambda **kw: GaussianAugmentationLoss(0.25, 2, **kw))


def test_repr_and_terms() -> None:
    criterion = GaussianAugmentationLoss(0.5)
    assert repr(criterion) == "GaussianAugmentationLoss(sigma=0.5, num_noise=1)"
    assert criterion.term_names == ("natural",)
    assert list(criterion.parameters()) == []


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be positive and finite, got 0.0"),
        ({"sigma": -0.5}, ValueError, "sigma must be positive and finite, got -0.5"),
        ({"sigma": float("inf")}, ValueError, "sigma must be positive and finite, got inf"),
        ({"sigma": "0.5"}, TypeError, "sigma must be a real number, got str"),
        ({"sigma": True}, TypeError, "sigma must be a real number, got bool"),
        ({"sigma": 0.5, "num_noise": 0}, ValueError, "num_noise must be a positive integer, got 0"),
        ({"sigma": 0.5, "num_noise": 2.0}, TypeError, "num_noise must be an integer, got float"),
        ({"sigma": 0.5, "generator": 0}, TypeError, "generator must be a torch.Generator, got int"),
    ],
)
def test_constructor_errors(kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        GaussianAugmentationLoss(**kwargs)


@pytest.mark.parametrize(
    ("noise_shape", "match"),
    [
        ((5, 4), r"noise must have shape \[m \* 2, \*\(4,\)\]"),
        ((4, 3), "noise must have shape"),
        ((0, 4), "noise must have shape"),
        ((4, 4, 1), "noise must have shape"),
    ],
)
def test_functional_noise_shape_errors(noise_shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gaussian_augmentation_loss(
            nn.Linear(4, 3), torch.rand(2, 4), torch.tensor([0, 1]), torch.zeros(noise_shape)
        )


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(max_value=0.0) | st.just(float("nan")) | st.just(float("inf")))
def test_any_non_positive_sigma_is_rejected(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma must be positive"):
        GaussianAugmentationLoss(sigma)


@settings(max_examples=25, deadline=None, database=None)
@given(st.floats(min_value=1e-6, max_value=1e6), st.integers(min_value=1, max_value=64))
def test_any_positive_sigma_and_num_noise_are_accepted(sigma: float, num_noise: int) -> None:
    criterion = GaussianAugmentationLoss(sigma, num_noise)
    assert (criterion.sigma, criterion.num_noise) == (sigma, num_noise)


def test_smoke_digits(checks, digits) -> None:
    checks.smoke(lambda **kw: GaussianAugmentationLoss(0.25, 1, **kw), digits)
