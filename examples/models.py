"""Architectures, the input-normalisation layer and checkpoints shared by the examples and benchmarks.

The model is always ``nn.Sequential(normalize, net)``: a first layer that standardises the
``[0, 1]`` pixels (or an ``nn.Identity`` for MNIST-like data, as in the reference code), then the
network. The smoothing noise is therefore added in pixel space and sigma and the certified radii
are in pixel units. Unlike the reference ``NormalizeLayer``, the mean and std are registered
buffers, so they are saved in the ``state_dict``.

Architectures (``ARCHS``):

- ``lenet``: the LeNet of the SmoothMix / Consistency MNIST experiments: conv5x5 (C->20), ReLU,
  maxpool 2, conv5x5 (20->50), ReLU, maxpool 2, FC 800->500, ReLU, FC 500->K. Needs 28x28 inputs.
- ``cifar_resnet20`` / ``cifar_resnet110``: the CIFAR ResNet of Cohen et al. (bearpaw's
  pytorch-classification): BasicBlocks, depth 6n+2, widths 16/32/64 with strides 1/2/2, global
  average pooling, FC 64->K. Conv weights ~ N(0, 2 / (k*k*out_channels)), BatchNorm 1/0.
- ``mlp``: Flatten, FC D->256, ReLU, FC 256->256, ReLU, FC 256->K (any input size; fast on CPU).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHS",
    "CHECKPOINT_FORMAT",
    "NormalizeLayer",
    "build_model",
    "load_checkpoint",
]

#: Tag stored in every checkpoint written by ``examples/train.py``.
CHECKPOINT_FORMAT = "rsmooth-examples-checkpoint/1"


class NormalizeLayer(nn.Module):
    """Per-channel ``(x - mean) / std`` on ``[B, C, H, W]`` inputs, with mean and std as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(
                f"mean and std must have the same length, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class LeNet(nn.Sequential):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(800, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # AvgPool2d(8) on 32x32 inputs, as in the original
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(x.flatten(1))


def _lenet(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if tuple(shape[1:]) != (28, 28):
        raise ValueError(f"arch 'lenet' needs 28x28 inputs, got input_shape {tuple(shape)}")
    return LeNet(shape[0], num_classes)


def _mlp(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    features = math.prod(shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


#: Architecture name -> builder ``(input_shape, num_classes) -> nn.Module``.
ARCHS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "lenet": _lenet,
    "cifar_resnet20": lambda shape, k: CifarResNet(20, shape[0], k),
    "cifar_resnet110": lambda shape, k: CifarResNet(110, shape[0], k),
    "mlp": _mlp,
}


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """``nn.Sequential(normalize, net)``; ``normalize`` is ``nn.Identity()`` when ``mean`` is None."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {shape}")
    if mean is not None and std is not None and len(mean) != shape[0]:
        raise ValueError(f"mean must have one value per channel ({shape[0]}), got {tuple(mean)}")
    normalize: nn.Module = (
        nn.Identity() if mean is None or std is None else NormalizeLayer(mean, std)
    )
    return nn.Sequential(normalize, ARCHS[arch](shape, num_classes))  # type: ignore[arg-type]


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the model saved by ``examples/train.py``; returns ``(model, checkpoint)``.

    The model is in eval mode. ``checkpoint`` holds everything that was saved: ``arch``,
    ``dataset``, ``input_shape``, ``num_classes``, ``normalization`` (``{"mean", "std"}`` or
    None), ``sigma``, ``criterion``, ``hparams``, ``epoch``, ``history``, ``args`` and the state
    dicts.
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a checkpoint written by examples/train.py")
    norm = checkpoint["normalization"]
    model = build_model(
        checkpoint["arch"],
        checkpoint["input_shape"],
        checkpoint["num_classes"],
        None if norm is None else norm["mean"],
        None if norm is None else norm["std"],
    )
    model.load_state_dict(checkpoint["state_dict"])
    model.to(map_location).eval()
    return model, checkpoint
