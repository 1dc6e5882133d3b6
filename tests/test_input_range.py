"""The [0, 1] input-range check of SmoothedClassifier, the attacks and the runner (issue 12, 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rsmooth import SmoothedClassifier
from rsmooth.attacks import SmoothPGDAttack
from rsmooth.procedures import Certify
from rsmooth.runner import certify_dataset


def _model() -> nn.Module:
    torch.manual_seed(0)  # the test's own weights
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


X = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["certify", "predict", "soft_predict", "sample_counts"])
def test_smoothed_classifier_rejects_8bit_pixels(method: str) -> None:
    smoothed = SmoothedClassifier(_model(), 0.25)
    call = {
        "certify": lambda x: smoothed.certify(x, n=100, n0=10, alpha=0.01),
        "predict": lambda x: smoothed.predict(x, n=100, alpha=0.01),
        "soft_predict": lambda x: smoothed.soft_predict(x),
        "sample_counts": lambda x: smoothed.sample_counts(x, num=10),
    }[method]
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*8-bit pixels.*input_range=None"):
        call(X * 255)
    with pytest.raises(ValueError, match=r"normalisation \(mean/std\) applied outside the model"):
        call((X - 0.5) / 0.25)
    call(X)  # in range: fine


def test_smoothed_classifier_input_range_none_or_custom() -> None:
    g = torch.Generator().manual_seed(0)
    cert = SmoothedClassifier(_model(), 0.25, input_range=None).certify(
        X * 255, n=100, n0=10, alpha=0.01, generator=g
    )
    assert cert.prediction.shape == (2,)
    custom = SmoothedClassifier(_model(), 0.25, input_range=(0.0, 255.0))
    assert custom.predict(X * 255, n=50, alpha=0.01).shape == (2,)
    with pytest.raises(ValueError, match=r"must lie in \[0, 255\]"):
        custom.predict((X + 1) * 255, n=50, alpha=0.01)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [((1.0, 0.0), ValueError, "low < high"), (1.0, TypeError, "input_range must be None")],
)
def test_smoothed_classifier_input_range_validated(value: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        SmoothedClassifier(_model(), 0.25, input_range=value)  # type: ignore[arg-type]


def test_attack_rejects_8bit_pixels_with_a_hint() -> None:
    attack = SmoothPGDAttack(0.25, 0.5, 1, 2)
    with pytest.raises(ValueError, match=r"8-bit pixels.*projects onto \[0, 1\]"):
        attack(_model(), X * 255, torch.tensor([0, 1]))


def test_runner_refuses_8bit_dataset_before_writing(tmp_path) -> None:
    data = TensorDataset(X[0].unsqueeze(0).repeat(3, 1, 1, 1) * 255, torch.tensor([0, 1, 2]))
    out = tmp_path / "r.tsv"
    smoothed = SmoothedClassifier(_model(), 0.25)
    with pytest.raises(ValueError, match=r"dataset\[0\].*8-bit pixels"):
        certify_dataset(smoothed, data, out, procedure=Certify(n=100, n0=10), progress=False)
    assert not out.exists()
    off = SmoothedClassifier(_model(), 0.25, input_range=None)
    assert (
        len(certify_dataset(off, data, out, procedure=Certify(n=100, n0=10), progress=False)) == 3
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_attacks_accept_every_integer_label_dtype(dtype: torch.dtype) -> None:
    from rsmooth.attacks import SmoothDDNAttack, UnrestrictedSmoothAttack

    y = torch.tensor([0, 2])
    for make in (
        lambda: SmoothPGDAttack(0.25, 0.5, 2, 2, generator=torch.Generator().manual_seed(0)),
        lambda: SmoothDDNAttack(0.25, 0.5, 2, 2, generator=torch.Generator().manual_seed(0)),
        lambda: UnrestrictedSmoothAttack(
            0.25, 0.5, 2, 2, generator=torch.Generator().manual_seed(0)
        ),
    ):
        model = _model()
        assert torch.equal(make()(model, X, y.to(dtype)), make()(model, X, y))
