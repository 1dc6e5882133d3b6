"""autocast_disagreement: how often the reduced-precision model's votes differ, on certify's samples."""

import pytest
import torch
from torch import nn

from rsmooth import SmoothedClassifier
from rsmooth.diagnostics import autocast_disagreement


class FlipsUnderAutocast(nn.Module):
    """Class 0 iff the first coordinate is positive; under autocast always class 1."""

    def forward(self, x):
        score = x[:, :1].float()
        logits = torch.cat([score, -score], dim=1)
        if torch.is_autocast_enabled(x.device.type):
            logits = torch.cat([torch.zeros_like(score), torch.ones_like(score)], dim=1)
        return logits


def test_the_share_is_measured_on_the_samples_certify_counts():
    smoothed = SmoothedClassifier(FlipsUnderAutocast(), 0.5, input_range=None, batch_size=64)
    x = torch.tensor([[0.3, 0.0], [-0.2, 0.0], [1.5, 0.0]])
    gens = lambda: torch.Generator().manual_seed(3)
    share = autocast_disagreement(smoothed, x, num=500, generator=gens())
    cert = smoothed.certify(x, n=500, n0=20, generator=gens())
    class0 = torch.where(cert.prediction == 0, cert.count, 500 - cert.count)
    # the votes differ exactly on the samples whose float32 vote is class 0
    assert share.tolist() == (class0.double() / 500).tolist()
    assert share.dtype == torch.float64 and 0 < float(share[1]) < float(share[0]) < 1


def test_a_model_with_a_wide_margin_agrees():
    linear = nn.Linear(6, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3, 6) * 8.0)
        linear.bias.zero_()
    x = torch.eye(3, 6) * 0.9
    smoothed = SmoothedClassifier(linear, 0.1, batch_size=128)
    share = autocast_disagreement(smoothed, x, num=300, generator=torch.Generator().manual_seed(0))
    assert share.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda s, x: autocast_disagreement(s.model, x),
            TypeError,
            "smoothed must be a SmoothedClassifier",
        ),
        (
            lambda s, x: autocast_disagreement(s, x, dtype=torch.float32),
            ValueError,
            "dtype must be torch.bfloat16",
        ),
        (
            lambda s, x: autocast_disagreement(s, x, num=0),
            ValueError,
            "num must be a positive integer",
        ),
        (lambda s, x: autocast_disagreement(s, x[0, 0]), ValueError, "inputs must be a batch"),
    ],
)
def test_errors(call, exc, match):
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5)
    with pytest.raises(exc, match=match):
        call(smoothed, torch.zeros(2, 2))
