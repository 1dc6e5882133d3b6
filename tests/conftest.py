"""Shared fixtures: device/dtype options and tiny models."""

from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str, name: str) -> types.ModuleType:
    """Import a script of the repository (``benchmarks/``, ``examples/``) from its path."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None, relative
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=os.environ.get("RSMOOTH_TEST_DEVICE", "cpu"),
        help="device to run tests on (cpu, cuda, ...); env RSMOOTH_TEST_DEVICE",
    )
    parser.addoption("--dtype", default="float32", help="floating dtype for tests")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return dev


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture
def generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(1234)


class LinearTwoClass(nn.Module):
    """f(x) = class 0 iff w.x + b > 0 (logits [s, -s] with s = w.x + b)."""

    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone().flatten())
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.weight + self.bias
        return torch.stack([score, -score], dim=1)


def small_cnn(num_classes: int = 10) -> nn.Module:
    """A LeNet-ish CNN on 1x8x8 inputs with BatchNorm and Dropout (mode-sensitive)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(4 * 4 * 4, num_classes),
    )


def small_mlp(in_features: int = 6, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, num_classes)
    )


class Spy(nn.Module):
    """Wraps a model and records (a copy of) every batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


class Mixed(nn.Module):
    """Mixes train/eval submodules and a frozen parameter; records (training, head trainable) per
    call and raises on call ``fail_on_call``."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.body = small_mlp(6, 3)
        self.body[1].eval()
        self.body[0].bias.requires_grad_(False)
        self.fail_on_call = fail_on_call
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, any(p.requires_grad for p in self.body[3].parameters())))
        if self.fail_on_call is not None and len(self.seen) >= self.fail_on_call:
            raise RuntimeError("boom")
        return self.body(x)


def gens(seeds, device="cpu") -> list[torch.Generator]:
    """One generator per seed: per-input noise streams."""
    return [torch.Generator(device).manual_seed(s) for s in seeds]


def fixed_rand(*shape: int) -> torch.Tensor:
    """Uniform [0, 1) values that do not depend on the tests run before."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` with its parameters drawn from a fixed generator (in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.5)
    return module.eval()


def cnn(num_classes: int = 10) -> nn.Module:
    """``small_cnn`` with fixed weights, so that the votes spread over classes."""
    return seeded(small_cnn(num_classes))


def flat_model(numel: int, num_classes: int = 10) -> nn.Module:
    """A linear model on flattened inputs with fixed weights."""
    return seeded(nn.Sequential(nn.Flatten(), nn.Linear(numel, num_classes)))
