"""Architectures, the input-normalisation layer and checkpoints shared by the examples and benchmarks.

The model is always ``nn.Sequential(normalize, net)``: a first layer that standardises the
``[0, 1]`` pixels (an ``nn.Identity`` for MNIST-like data, as in the reference code), then the
network, so the smoothing noise is added in pixel space and sigma and the certified radii are in
pixel units. The papers' architectures and the normalisation layer come from
:mod:`rsmooth.models`, so the ``state_dict`` of a model trained here has exactly the layout of the
research code's checkpoints (``rsmooth.models.load_research_checkpoint`` reads it too once saved
in that format, and ``rsmooth certify --checkpoint`` certifies it).

Architectures (``ARCHS``):

- ``lenet``: the LeNet of the SmoothMix / Consistency MNIST experiments (``rsmooth.models.lenet``).
  Needs 28x28 inputs.
- ``cifar_resnet20`` / ``cifar_resnet110``: the CIFAR ResNet of Cohen et al.
  (``rsmooth.models.cifar_resnet20`` / ``cifar_resnet110``).
- ``mlp``: Flatten, FC D->256, ReLU, FC 256->256, ReLU, FC 256->K (any input size; fast on CPU).

Checkpoints written before the switch to :mod:`rsmooth.models` (format
``rsmooth-examples-checkpoint/1``) still load: their keys are renamed to the new layout.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rsmooth.models import NormalizeLayer, cifar_resnet20, cifar_resnet110, lenet

__all__ = [
    "ARCHS",
    "CHECKPOINT_FORMAT",
    "NormalizeLayer",
    "build_model",
    "load_checkpoint",
]

#: Tag stored in every checkpoint written by ``examples/train.py``.
CHECKPOINT_FORMAT = "rsmooth-examples-checkpoint/2"
_LEGACY_FORMAT = "rsmooth-examples-checkpoint/1"


def _lenet(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if tuple(shape[1:]) != (28, 28):
        raise ValueError(f"arch 'lenet' needs 28x28 inputs, got input_shape {tuple(shape)}")
    return lenet(num_classes=num_classes, in_channels=shape[0])


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
    "cifar_resnet20": lambda shape, k: cifar_resnet20(num_classes=k, in_channels=shape[0]),
    "cifar_resnet110": lambda shape, k: cifar_resnet110(num_classes=k, in_channels=shape[0]),
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


def _legacy_state(arch: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of a format-1 checkpoint (own LeNet and ResNet classes) to the new layout."""
    renamed = {}
    lenet_layers = {"0": "conv1", "3": "conv2", "7": "fc1", "9": "fc2"}
    blocks = None
    if arch.startswith("cifar_resnet"):
        blocks = (int(arch[len("cifar_resnet") :]) - 2) // 6
    for key, value in state.items():
        if key in ("0.mean", "0.std"):  # normalisation buffers: now rebuilt from the checkpoint
            continue
        if arch == "lenet" and (match := re.fullmatch(r"1\.(\d+)\.(.+)", key)):
            key = f"1.{lenet_layers.get(match[1], match[1])}.{match[2]}"
        elif blocks and (match := re.fullmatch(r"1\.layers\.(\d+)\.(.+)", key)):
            index = int(match[1])
            key = f"1.layer{index // blocks + 1}.{index % blocks}.{match[2]}"
        renamed[key] = value
    return renamed


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the model saved by ``examples/train.py``; returns ``(model, checkpoint)``.

    The model is in eval mode. ``checkpoint`` holds everything that was saved: ``arch``,
    ``dataset``, ``input_shape``, ``num_classes``, ``normalization`` (``{"mean", "std"}`` or
    None), ``sigma``, ``criterion``, ``hparams``, ``epoch``, ``history``, ``args`` and the state
    dicts (for an older checkpoint, ``state_dict`` already renamed to the current layout).
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in (
        CHECKPOINT_FORMAT,
        _LEGACY_FORMAT,
    ):
        raise ValueError(f"{os.fspath(path)} is not a checkpoint written by examples/train.py")
    if checkpoint["format"] == _LEGACY_FORMAT:
        checkpoint["state_dict"] = _legacy_state(checkpoint["arch"], checkpoint["state_dict"])
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
