"""Shared checks for the criteria: every test_<criterion>.py runs the same contract through them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from rsmooth.losses import SmoothingCriterion

MakeCriterion = Callable[..., SmoothingCriterion]


def _mlp(in_features: int = 6, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, num_classes)
    )


def _cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(4 * 4 * 4, num_classes),
    )


class MixedStateModel(nn.Module):
    """Train-mode MLP with an eval-mode BatchNorm and a frozen layer.

    With ``mutate=True`` its forward flips modes and ``requires_grad`` flags (what a careless
    model or hook might do); with ``fail=True`` it then raises.
    """

    def __init__(self, *, mutate: bool = False, fail: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(8, 3)
        self.bn.eval()
        self.fc2.bias.requires_grad_(False)
        self.mutate, self.fail = mutate, fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mutate:
            self.bn.train()
            self.fc1.eval()
            self.fc1.weight.requires_grad_(False)
            self.fc2.bias.requires_grad_(True)
        if self.fail:
            raise RuntimeError("boom")
        return self.fc2(self.act(self.bn(self.fc1(x))))


def _state(model: nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


class CriterionChecks:
    """The parts of the criterion contract that are the same for every criterion."""

    @staticmethod
    def state_restored(make: MakeCriterion) -> None:
        criterion = make(generator=torch.Generator().manual_seed(0))
        x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
        for mutate in (False, True):
            model = MixedStateModel(mutate=mutate)
            before = _state(model)
            criterion(model, x, y).backward()
            assert _state(model) == before
        model = MixedStateModel(mutate=True, fail=True)
        before = _state(model)
        with pytest.raises(RuntimeError, match="boom"):
            criterion(model, x, y)
        assert _state(model) == before
        assert criterion.last_terms == {}

    @staticmethod
    def runs_in_current_mode(make: MakeCriterion) -> None:
        criterion = make(generator=torch.Generator().manual_seed(0))
        x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = _mlp()
        bn = model[1]
        criterion(model, x, y)  # train mode: batch statistics, running stats move
        assert model.training
        assert int(bn.num_batches_tracked) > 0
        tracked = int(bn.num_batches_tracked)
        model.eval()
        with pytest.warns(UserWarning, match=r"eval\(\) mode"):
            criterion(model, x, y)  # eval mode: running stats untouched, with a warning
        assert not model.training
        assert int(bn.num_batches_tracked) == tracked

    @staticmethod
    def reproducible(make: MakeCriterion) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = _mlp()
        x, y = torch.rand(7, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0])

        def loss(seed: int) -> torch.Tensor:
            return make(generator=torch.Generator().manual_seed(seed))(model, x, y).detach()

        assert torch.equal(loss(0), loss(0))
        assert not torch.equal(loss(0), loss(1))

    @staticmethod
    def shapes(make: MakeCriterion) -> None:
        criterion = make(generator=torch.Generator().manual_seed(0))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            models = [_mlp(6, 3), _cnn(10)]
        batches = [
            (torch.rand(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])),
            (torch.rand(8, 1, 8, 8), torch.arange(8)),
        ]
        for model, (x, y) in zip(models, batches, strict=True):
            loss = criterion(model, x, y)
            assert loss.shape == ()
            assert torch.isfinite(loss)
            loss.backward()
            assert all(p.grad is not None for p in model.parameters())
            assert set(criterion.last_terms) == set(criterion.term_names)
            assert all(isinstance(v, float) for v in criterion.last_terms.values())

    @staticmethod
    def smoke(
        make: MakeCriterion,
        digits: tuple[torch.Tensor, torch.Tensor],
        steps: int = 30,
        factor: float = 0.8,
    ) -> None:
        x, y = digits
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def evaluate() -> float:
            return make(generator=torch.Generator().manual_seed(123))(model, x, y).item()

        criterion = make(generator=torch.Generator().manual_seed(0))
        # SGD with momentum 0.9, written out (torch.optim's first use imports torch._dynamo,
        # which alone costs more than this whole test).
        velocity = [torch.zeros_like(p) for p in model.parameters()]
        start = evaluate()
        for _ in range(steps):
            model.zero_grad()
            criterion(model, x, y).backward()
            with torch.no_grad():
                for param, buf in zip(model.parameters(), velocity, strict=True):
                    buf.mul_(0.9).add_(param.grad)
                    param.sub_(0.1 * buf)
        end = evaluate()
        assert end < factor * start, (start, end)


@pytest.fixture
def checks() -> type[CriterionChecks]:
    return CriterionChecks


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """256 scikit-learn digits, 1x8x8 in [0, 1]."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.images[:256], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target[:256], dtype=torch.int64)
    return x, y
