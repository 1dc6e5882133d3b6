"""The research code's architectures, normalisation layer and checkpoint format.

The models released with the randomized-smoothing papers (Cohen et al.; SmoothAdv, Consistency,
SmoothMix, CAT-RS and the codebases built on them) were all saved by one training script::

    torch.save({"epoch": ..., "arch": ..., "state_dict": model.state_dict(),
                "optimizer": ...}, "checkpoint.pth.tar")

where ``model = nn.Sequential(normalize, network)``: layer ``0`` standardises the ``[0, 1]``
pixels per channel (it has no state-dict entries; it is an identity for MNIST-like data), layer
``1`` is one of a handful of architectures. This module rebuilds exactly that layout, so that
:func:`load_research_checkpoint` loads those files as they are and the smoothing noise is added in
pixel space (sigma and the radii keep the papers' units).

The dataset is **not** recorded in the checkpoint: it decides layer ``0`` and must be given.

======================  ==============================================  =======  =========
architecture            network                                         classes  input
======================  ==============================================  =======  =========
``lenet``               LeNet: conv5x5 20, pool, conv5x5 50, pool,      10       1x28x28
                        fc 800->500, fc 500->10
``cifar_resnet20``      CIFAR ResNet, depth 20 (3 stages of 3)          10       3x32x32
``cifar_resnet110``     CIFAR ResNet, depth 110 (3 stages of 18)        10       3x32x32
``cifar100_resnet110``  CIFAR ResNet, depth 110                         100      3x32x32
``resnet50``            torchvision's ResNet-50 (``rsmooth[models]``)   1000     3x224x224
======================  ==============================================  =======  =========

Only what the field standardised lives here; your own models stay yours (put their
normalisation inside them, as :class:`NormalizeLayer` does).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "NORMALIZATION",
    "CifarResNet",
    "LeNet",
    "NormalizeLayer",
    "cifar100_resnet110",
    "cifar_resnet20",
    "cifar_resnet110",
    "get_model",
    "is_research_checkpoint",
    "lenet",
    "load_research_checkpoint",
    "resnet50",
]

_MODELS_HINT = "pip install 'rsmooth[models]' (torchvision)"


# ---------------------------------------------------------------------------- normalisation
@dataclass(frozen=True, slots=True)
class _Normalization:
    channels: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


#: Per-dataset normalisation of the research code: ``{dataset: (mean, std)}``, or ``None`` for
#: the MNIST-like datasets, which the research code feeds to the network unnormalised.
NORMALIZATION: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "mnist": None,
    "mnist-5k": None,
    "fashion-mnist": None,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_CHANNELS = {"mnist": 1, "mnist-5k": 1, "fashion-mnist": 1, "cifar10": 3, "cifar100": 3}
_CHANNELS["imagenet"] = 3


class NormalizeLayer(nn.Module):
    r"""Standardise each channel, :math:`(x_c - \mu_c) / s_c`, as the model's first layer.

    The research code's normalisation layer: it has no parameters and no state-dict entries
    (mean and std are non-persistent buffers, so ``.to(device)`` moves them), and it is applied to
    pixels in ``[0, 1]``, so the smoothing noise added before it is in pixel units.

    Args:
        mean: Per-channel mean :math:`\mu`.
        std: Per-channel standard deviation :math:`s`, each positive.

    Shape:
        - inputs: ``(B, C, *)`` with ``C = len(mean)``.
        - output: same as the inputs.

    Raises:
        ValueError: ``mean`` and ``std`` differ in length, are empty, or a std is not positive;
            (when called) the inputs do not have ``len(mean)`` channels.

    Example:
        >>> layer = NormalizeLayer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> layer(torch.ones(1, 3, 2, 2)).flatten()[:3].tolist()
        [2.0, 2.0, 2.0]
        >>> len(layer.state_dict())
        0
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) == 0 or len(mean) != len(std):
            raise ValueError(
                f"mean and std must have the same positive length, got {len(mean)} and {len(std)}"
            )
        if not all(s > 0 and math.isfinite(s) for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    def forward(self, inputs: Tensor) -> Tensor:
        """Standardise ``inputs`` of shape ``(B, C, *)`` channel by channel."""
        channels = self.mean.numel()
        if inputs.dim() < 2 or inputs.shape[1] != channels:
            raise ValueError(
                f"inputs must have {channels} channels in dimension 1 (B, C, ...), got shape "
                f"{tuple(inputs.shape)}"
            )
        view = (1, channels) + (1,) * (inputs.dim() - 2)
        mean = self.mean.to(inputs.dtype).view(view)
        std = self.std.to(inputs.dtype).view(view)
        return (inputs - mean) / std

    def extra_repr(self) -> str:
        """The mean and std, for ``repr``."""
        return f"mean={tuple(self.mean.tolist())}, std={tuple(self.std.tolist())}"


def _normalization(dataset: object) -> nn.Module:
    stats = NORMALIZATION[_check_dataset(dataset)]
    return nn.Identity() if stats is None else NormalizeLayer(*stats)


def _check_dataset(dataset: object) -> str:
    if dataset is None:
        raise ValueError(
            "dataset must be given: the research checkpoint format does not record it, and it "
            f"decides the normalisation layer; one of {sorted(NORMALIZATION)}"
        )
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a str, got {type(dataset).__name__}")
    if dataset not in NORMALIZATION:
        raise ValueError(f"dataset must be one of {sorted(NORMALIZATION)}, got {dataset!r}")
    return dataset


# ---------------------------------------------------------------------------- architectures
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


class _DataParallelLayout(nn.Module):
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


@dataclass(frozen=True, slots=True)
class _Arch:
    build: Callable[[], nn.Module]
    in_channels: int
    data_parallel: bool = False


_ARCHS: dict[str, _Arch] = {
    "lenet": _Arch(lenet, 1),
    "cifar_resnet20": _Arch(cifar_resnet20, 3),
    "cifar_resnet110": _Arch(cifar_resnet110, 3),
    "cifar100_resnet110": _Arch(cifar100_resnet110, 3),
    "resnet50": _Arch(resnet50, 3, data_parallel=True),
}

#: Names accepted by :func:`get_model`, as the research checkpoints' ``"arch"`` entry spells them.
ARCHITECTURES: tuple[str, ...] = tuple(_ARCHS)


def get_model(arch: str, dataset: str) -> nn.Sequential:
    """``nn.Sequential(normalize, network)`` with random weights, in the research code's layout.

    Layer ``0`` is the dataset's normalisation (:class:`NormalizeLayer`, or ``nn.Identity`` for
    MNIST-like data); layer ``1`` the architecture (``resnet50`` under a ``module.`` level, as
    ``DataParallel`` saved it). The state-dict keys and shapes are those of the released
    checkpoints, so ``model.load_state_dict(checkpoint["state_dict"])`` works as is. Feed it
    pixels in ``[0, 1]``.

    Args:
        arch: One of :data:`ARCHITECTURES`.
        dataset: One of the keys of :data:`NORMALIZATION` (``"cifar10"``, ``"mnist"``, ...).

    Returns:
        The model, in training mode (as any freshly built ``nn.Module``).

    Raises:
        ValueError: Unknown ``arch`` or ``dataset`` (the message lists the known ones), or the
            dataset's images have a different number of channels than the architecture takes.
        TypeError: ``arch`` or ``dataset`` is not a str.
        ModuleNotFoundError: ``arch="resnet50"`` without torchvision.

    Example:
        >>> model = get_model("cifar_resnet20", "cifar10")
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> next(iter(model.state_dict()))
        '1.conv1.weight'
    """
    spec = _check_arch(arch)
    dataset = _check_dataset(dataset)
    if _CHANNELS[dataset] != spec.in_channels:
        raise ValueError(
            f"dataset {dataset!r} has {_CHANNELS[dataset]}-channel images but arch {arch!r} "
            f"takes {spec.in_channels} channels"
        )
    net = spec.build()
    if spec.data_parallel:
        net = _DataParallelLayout(net)
    return nn.Sequential(_normalization(dataset), net)


def _check_arch(arch: object) -> _Arch:
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a str, got {type(arch).__name__}")
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHITECTURES)}, got {arch!r}")
    return _ARCHS[arch]


# ---------------------------------------------------------------------------- checkpoints
def is_research_checkpoint(checkpoint: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether a loaded object has the research format's ``"arch"`` and ``"state_dict"`` entries.

    Example:
        >>> is_research_checkpoint({"epoch": 90, "arch": "lenet", "state_dict": {}})
        True
        >>> is_research_checkpoint({"conv1.weight": torch.zeros(1)})
        False
    """
    return (
        isinstance(checkpoint, Mapping)
        and isinstance(checkpoint.get("arch"), str)
        and isinstance(checkpoint.get("state_dict"), Mapping)
    )


def _read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types for a file that is not its own
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"{os.fspath(path)} is not a PyTorch checkpoint that loads with weights_only=True "
            f"({first})"
        ) from None


def _key_mismatch(expected: Sequence[str], got: Sequence[str]) -> str | None:
    missing = [k for k in expected if k not in set(got)]
    unexpected = [k for k in got if k not in set(expected)]
    if not missing and not unexpected:
        return None

    def first(keys: list[str]) -> str:
        more = f", ... ({len(keys) - 5} more)" if len(keys) > 5 else ""
        return ", ".join(keys[:5]) + more

    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {first(unexpected)}")
    message = "; ".join(parts)
    stripped = {k.replace("module.", "", 1) for k in unexpected}
    added = {k for k in expected if "module." in k}
    if unexpected and stripped & set(missing):
        message += (
            "; hint: the checkpoint's keys have a 'module.' prefix (saved from DataParallel or "
            "DistributedDataParallel); remove it, e.g. {k.replace('module.', '', 1): v ...}"
        )
    elif missing and added and {k.replace("module.", "", 1) for k in missing} & set(unexpected):
        message += (
            "; hint: this architecture's keys have a 'module.' level (the research code saved it "
            "under DataParallel) that the checkpoint lacks"
        )
    return message


def _load_state(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    expected = model.state_dict()
    mismatch = _key_mismatch(list(expected), [str(k) for k in state])
    if mismatch is not None:
        raise ValueError(f"{source} does not match the architecture: {mismatch}")
    shapes = [
        f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
        for k, v in state.items()
        if isinstance(v, Tensor) and v.shape != expected[k].shape
    ]
    if shapes:
        more = f", ... ({len(shapes) - 3} more)" if len(shapes) > 3 else ""
        raise ValueError(f"{source} has tensors of other shapes: {'; '.join(shapes[:3])}{more}")
    model.load_state_dict(state)


def load_research_checkpoint(
    path: str | os.PathLike[str],
    dataset: str | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> nn.Sequential:
    """Load a checkpoint in the research code's format; returns the model in eval mode.

    The file is ``{"epoch", "arch", "state_dict", "optimizer"}`` as written by the training script
    of Cohen et al. and the codebases built on it. The architecture comes from ``"arch"``, the
    normalisation layer from ``dataset`` (the file does not record it). The file is read with
    ``torch.load(..., weights_only=True)``, so it cannot run code. Feed the model pixels in
    ``[0, 1]`` and use the sigma it was trained with.

    Args:
        path: The checkpoint file (``checkpoint.pth.tar``).
        dataset: The dataset the model was trained on, one of the keys of
            :data:`NORMALIZATION`. Required; ``None`` raises with the list.
        map_location: Where to load the tensors and put the model. Default: ``"cpu"``.

    Returns:
        ``nn.Sequential(normalize, network)`` in eval mode, as :func:`get_model` builds it.

    Raises:
        ValueError: ``dataset`` missing or unknown; the file is not a checkpoint, or has no
            ``"arch"`` / ``"state_dict"``; unknown architecture; missing or unexpected
            state-dict keys (the first few of each, with a hint when a ``module.`` prefix
            explains them) or tensors of other shapes; dataset and architecture channels differ.
        FileNotFoundError: No file at ``path``.

    Example:
        >>> import os, tempfile
        >>> model = get_model("lenet", "mnist")
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pth.tar")
        >>> torch.save({"epoch": 90, "arch": "lenet", "state_dict": model.state_dict(),
        ...             "optimizer": {}}, path)
        >>> loaded = load_research_checkpoint(path, "mnist")
        >>> loaded.training, torch.equal(loaded[1].fc2.bias, model[1].fc2.bias)
        (False, True)
    """
    dataset = _check_dataset(dataset)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {os.fspath(path)}")
    checkpoint = _read_checkpoint(path, map_location)
    return _model_from_checkpoint(checkpoint, dataset, path, map_location)


def _model_from_checkpoint(
    checkpoint: object,
    dataset: str,
    path: str | os.PathLike[str],
    map_location: str | torch.device,
) -> nn.Sequential:
    if not is_research_checkpoint(checkpoint):
        found = (
            f"keys {sorted(map(str, checkpoint))[:6]}"
            if isinstance(checkpoint, Mapping)
            else type(checkpoint).__name__
        )
        raise ValueError(
            f"{os.fspath(path)} is not a research-format checkpoint (a dict with 'arch' and "
            f"'state_dict'); it holds {found}"
        )
    model = get_model(checkpoint["arch"], dataset)
    _load_state(model, checkpoint["state_dict"], f"the state_dict of {os.fspath(path)}")
    return model.to(map_location).eval()
