"""The research code's network architectures (see :mod:`rsmooth.models`, which exports them)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "CifarResNet",
    "DataParallelLayout",
    "LeNet",
    "cifar100_resnet110",
    "cifar_resnet20",
    "cifar_resnet110",
    "lenet",
    "resnet50",
]

_MODELS_HINT = "pip install 'rsmooth[models]' (torchvision)"


class LeNet(nn.Module):
    """The LeNet of the MNIST experiments: two conv5x5-ReLU-maxpool stages, then two FC layers.

    State-dict keys ``conv1``, ``conv2``, ``fc1``, ``fc2`` (weights and biases), as in the research
    code. Needs 28x28 inputs (the second stage leaves 50x4x4 = 800 features).

    Args:
        num_classes: Number of outputs. Default: 10.
        in_channels: Input channels. Default: 1.

    Example:
        >>> LeNet()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of ``(B, in_channels, 28, 28)`` inputs."""
        x = nn.functional.max_pool2d(torch.relu(self.conv1(inputs)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
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
    """The CIFAR ResNet of depth 6n+2 used by Cohen et al. and the codebases built on theirs.

    A conv3x3 (16 planes), BatchNorm and ReLU, three stages ``layer1..layer3`` of n basic blocks
    with 16/32/64 planes and strides 1/2/2 (a 1x1 strided conv + BatchNorm shortcut,
    ``downsample``, where the shape changes), global average pooling and ``fc``. All convs are
    bias-free; conv weights start as N(0, 2 / (k·k·out_channels)), BatchNorm as 1 and 0. On 32x32
    inputs the pooling equals the research code's ``AvgPool2d(8)``.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        num_classes: Number of outputs. Default: 10.
        in_channels: Input channels. Default: 3.

    Raises:
        ValueError: ``depth`` is not 6n+2 with n >= 1.

    Example:
        >>> CifarResNet(20)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, depth: int, num_classes: int = 10, *, in_channels: int = 3) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 110, ...), got {depth!r}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(blocks):
                stage.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of ``(B, in_channels, H, W)`` inputs (32x32 on CIFAR)."""
        x = self.relu(self.bn1(self.conv1(inputs)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def lenet(*, num_classes: int = 10, in_channels: int = 1) -> LeNet:
    """The research code's ``lenet`` network (no normalisation layer).

    Example:
        >>> sum(p.numel() for p in lenet().parameters())
        431080
    """
    return LeNet(num_classes, in_channels=in_channels)


def cifar_resnet20(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """The research code's ``cifar_resnet20`` network (no normalisation layer).

    Example:
        >>> sum(p.numel() for p in cifar_resnet20().parameters())
        272474
    """
    return CifarResNet(20, num_classes, in_channels=in_channels)


def cifar_resnet110(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """The research code's ``cifar_resnet110`` network (no normalisation layer).

    Example:
        >>> len(cifar_resnet110().layer1)
        18
    """
    return CifarResNet(110, num_classes, in_channels=in_channels)


def cifar100_resnet110(*, num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """The research code's ``cifar100_resnet110``: ``cifar_resnet110`` with 100 classes.

    Example:
        >>> cifar100_resnet110().fc.out_features
        100
    """
    return CifarResNet(110, num_classes, in_channels=in_channels)


def resnet50(*, num_classes: int = 1000) -> nn.Module:
    """The ImageNet ResNet-50 of torchvision with random weights; needs ``rsmooth[models]``.

    Raises:
        ModuleNotFoundError: torchvision is not installed (the message says how to install it).

    Example:
        With torchvision installed for your torch (``tests/test_models.py`` checks this under
        ``python -m pytest -m torchvision``)::

            net = resnet50()
            net.fc.out_features  # 1000
    """
    try:
        from torchvision.models import resnet50 as torchvision_resnet50
    except ImportError as error:
        raise ModuleNotFoundError(
            f"architecture 'resnet50' needs torchvision: {_MODELS_HINT}", name="torchvision"
        ) from error
    net: nn.Module = torchvision_resnet50(weights=None, num_classes=num_classes)
    return net


class DataParallelLayout(nn.Module):
    """Holds the network as ``.module``, the state-dict layout of ``nn.DataParallel``.

    The research code wraps ResNet-50 in ``DataParallel``, so its keys start with ``1.module.``;
    this wrapper reproduces the keys without DataParallel's replication across GPUs.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.module(inputs)
        return out
