"""Tiny models and datasets for the runner and CLI tests (importable as module:factory)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rsmooth.procedures import Certify
from rsmooth.runner import COLUMNS

NUM_CLASSES = 3
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"n0": 20, "n": 200, "alpha": 0.001}
#: The CERTIFY procedure of the runner and CLI tests.
CERTIFY = Certify(**SETTINGS)


def subprocess_env(**extra):
    paths = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def rows(path):
    """Rows without the time column, as tuples of strings, sorted by idx (a stream writes them
    in the order the inputs finish)."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    assert header[: len(COLUMNS)] == list(COLUMNS)
    assert len(header) == len(COLUMNS) or header[-1].startswith("grid:")
    time_column = COLUMNS.index("time")
    found = [
        tuple(f for i, f in enumerate(line.split("\t")) if i != time_column) for line in lines[1:]
    ]
    return sorted(found, key=lambda row: int(row[0]))


def tiny_dataset(size: int = 24) -> TensorDataset:
    """Images 1x8x8 in [0, 1] with labels 0..2, the same in every process."""
    g = torch.Generator().manual_seed(7)
    labels = torch.arange(size) % NUM_CLASSES
    images = (0.5 + 0.2 * torch.randn(size, 1, 8, 8, generator=g)).clamp(0, 1)
    images[:, 0, :, :] += 0.15 * (labels.view(-1, 1, 1).float() - 1)
    return TensorDataset(images.clamp(0, 1), labels)


class TinyLinear(nn.Module):
    """A fixed linear classifier on 1x8x8 inputs (deterministic weights)."""

    def __init__(self, num_classes: int = NUM_CLASSES, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.linear = nn.Linear(64, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(scale * torch.randn(num_classes, 64, generator=g) / 8)
            self.linear.bias.zero_()
            self.linear.weight[:, :8] += torch.tensor([-1.0, 0.0, 1.0])[:num_classes, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1) - 0.5)  # normalisation inside the model


def tiny_model(num_classes: int = NUM_CLASSES) -> nn.Module:
    return TinyLinear(num_classes)


class SlowLinear(TinyLinear):
    """TinyLinear that sleeps in every forward pass (env RSMOOTH_TEST_DELAY seconds)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get("RSMOOTH_TEST_DELAY", "0.05")))
        return super().forward(x)


def slow_model() -> nn.Module:
    return SlowLinear()


def not_a_model() -> str:
    return "nope"


def flat_linear(in_features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
