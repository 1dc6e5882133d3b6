"""The research code's architectures, normalisation layer and checkpoint format.

The models released with the randomized-smoothing papers (Cohen et al.; SmoothAdv, Consistency,
SmoothMix, CAT-RS and the codebases built on them) were all saved by one training script::

    torch.save({"epoch": ..., "arch": ..., "state_dict": model.state_dict(),
                "optimizer": ...}, "checkpoint.pth.tar")

where ``model = nn.Sequential(normalize, network)``: layer ``0`` standardises the ``[0, 1]``
pixels per channel (it has no state-dict entries; it is an identity for MNIST-like data), layer
``1`` is one of a handful of architectures. This module rebuilds exactly that layout, so that
:func:`load_model` (and :func:`load_research_checkpoint`) loads those files as they are and the
smoothing noise is added in pixel space (sigma and the radii keep the papers' units).
:func:`load_model` also loads the other usual layouts (a plain state dict, ``{"state_dict": ...}``
or ``{"model": ...}``, keys saved under ``DataParallel`` or ``torch.compile``, a bare network
without the normalisation layer) into a research architecture or your own module.

The dataset is **not** recorded in the checkpoint: it decides layer ``0`` and must be given; its
number of classes must be the architecture's (a CIFAR-10 network under CIFAR-100's normalisation
is refused).

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
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from rsmooth._architectures import (
    CifarResNet,
    DataParallelLayout,
    LeNet,
    cifar100_resnet110,
    cifar_resnet20,
    cifar_resnet110,
    lenet,
    resnet50,
)
from rsmooth._hints import clean_message

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
    "load_model",
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
_CLASSES = {"mnist": 10, "mnist-5k": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}
_CLASSES["imagenet"] = 1000


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


@dataclass(frozen=True, slots=True)
class _Arch:
    build: Callable[[], nn.Module]
    in_channels: int
    num_classes: int
    data_parallel: bool = False


_ARCHS: dict[str, _Arch] = {
    "lenet": _Arch(lenet, 1, 10),
    "cifar_resnet20": _Arch(cifar_resnet20, 3, 10),
    "cifar_resnet110": _Arch(cifar_resnet110, 3, 10),
    "cifar100_resnet110": _Arch(cifar100_resnet110, 3, 100),
    "resnet50": _Arch(resnet50, 3, 1000, data_parallel=True),
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
            dataset's images have a different number of channels, or the dataset a different
            number of classes, than the architecture (``cifar_resnet20`` has 10 classes:
            ``"cifar100"`` or ``"imagenet"`` would put a CIFAR-10 network behind another
            dataset's normalisation).
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
    if _CLASSES[dataset] != spec.num_classes:
        same = sorted(
            name
            for name, k in _CLASSES.items()
            if k == spec.num_classes and _CHANNELS[name] == spec.in_channels
        )
        raise ValueError(
            f"dataset {dataset!r} has {_CLASSES[dataset]} classes but arch {arch!r} has "
            f"{spec.num_classes}: the dataset decides the normalisation layer, and a network "
            "behind another dataset's normalisation gives wrong logits; name the dataset the "
            f"model was trained on (for {arch!r}: one of {same})"
        )
    net = spec.build()
    if spec.data_parallel:
        net = DataParallelLayout(net)
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


_TRUST_HINT = (
    "if you trust the file, load it with trusted=True (command line: --trust-checkpoint), which "
    "lets torch.load run code from the file (weights_only=False); or, once, in a trusted "
    "session, save only its weights, torch.save(torch.load(path, weights_only=False)"
    "['state_dict'], 'weights.pt'), and load that plain state dict with "
    "rsmooth.models.load_model('weights.pt', arch=..., dataset=...), which builds "
    "rsmooth.models.get_model(arch, dataset) and loads it (or model=your_module)"
)


def _read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device, *, trusted: bool = False
) -> Any:
    """``torch.load`` the file once; torch's reason, whole and without ANSI codes, on failure."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {os.fspath(path)}")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except Exception as error:  # torch.load raises many types for a file it cannot read
        reason = clean_message(error) or type(error).__name__
        how = "torch.load" if trusted else "torch.load(..., weights_only=True)"
        message = f"cannot load {os.fspath(path)} with {how}: {type(error).__name__}: {reason}"
        if not trusted and (
            isinstance(error, pickle.UnpicklingError) and "Unsupported global" in reason
        ):
            message += (
                f". rsmooth reads checkpoints with weights_only=True by default: {_TRUST_HINT}"
            )
        elif "map_location" in reason:
            message += ". Pass map_location='cpu' (the default) to load it on this machine"
        raise ValueError(message) from None


_WRAPPED = ("_orig_mod", "module")  # torch.compile and (Distributed)DataParallel levels


def _canonical(key: str) -> str:
    """A state-dict key without the levels that wrappers add (``module.``, ``_orig_mod.``)."""
    return ".".join(part for part in key.split(".") if part not in _WRAPPED)


def _align(expected: Sequence[str], got: Sequence[str]) -> dict[str, str] | None:
    """Map each expected key to the checkpoint's key that differs only by wrapper levels."""
    by_canonical = {_canonical(k): k for k in got}
    if len(by_canonical) != len(got):
        return None
    mapping = {}
    for key in expected:
        match = by_canonical.get(_canonical(key))
        if match is None:
            return None
        mapping[key] = match
    return mapping if len(mapping) == len(got) == len(set(mapping.values())) else None


def _wrapped_levels(keys: Sequence[str]) -> str:
    levels = {part for key in keys for part in key.split(".")[:-1] if part in _WRAPPED}
    names = {"module": "'module.' (DataParallel)", "_orig_mod": "'_orig_mod.' (torch.compile)"}
    return " and ".join(names[level] for level in sorted(levels))


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
    levels = _wrapped_levels(list(got)) or _wrapped_levels(list(expected))
    if levels:
        message += (
            f" (compared without the {levels} levels, which rsmooth removes or adds by itself; "
            "the other keys differ)"
        )
    return message


def _load_state(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Load ``state`` into ``model``; its keys may differ by ``module.``/``_orig_mod.`` levels."""
    expected = model.state_dict()
    keys = [str(k) for k in state]
    mapping = {k: k for k in keys} if set(keys) == set(expected) else _align(list(expected), keys)
    if mapping is None:
        mismatch = _key_mismatch(list(expected), keys)
        raise ValueError(f"{source} does not match the architecture: {mismatch}")
    renamed = {key: state[mapping[key]] for key in expected}
    shapes = [
        f"{mapping[k]}: {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
        for k, v in renamed.items()
        if isinstance(v, Tensor) and v.shape != expected[k].shape
    ]
    if shapes:
        more = f", ... ({len(shapes) - 3} more)" if len(shapes) > 3 else ""
        raise ValueError(f"{source} has tensors of other shapes: {'; '.join(shapes[:3])}{more}")
    model.load_state_dict(renamed)


def _research_layout(model: nn.Module) -> bool:
    """``nn.Sequential(normalize, network)``, as :func:`get_model` builds it."""
    return (
        isinstance(model, nn.Sequential)
        and len(model) == 2
        and isinstance(model[0], (NormalizeLayer, nn.Identity))
    )


def _load_into(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Load into ``model``; for the research layout also a bare network's keys into layer 1."""
    keys = [str(k) for k in state]
    research = _research_layout(model)
    if research and isinstance(model, nn.Sequential):
        network = model[1]
        expected = list(model.state_dict())
        bare = set(keys) != set(expected) and _align(expected, keys) is None
        if bare and _align(list(network.state_dict()), keys) is not None:
            # the network saved without the normalisation layer, which has no state
            _load_state(network, state, source)
            return
    try:
        _load_state(model, state, source)
    except ValueError as error:
        wrapped = [k[2:] for k in map(_canonical, keys) if k.startswith("1.")]
        inner = list(map(_canonical, model.state_dict()))
        if not research and len(wrapped) == len(keys) and set(wrapped) == set(inner):
            raise ValueError(
                f"{error}; hint: {source} holds the research code's nn.Sequential(normalize, "
                "network) (every key starts with '1.'), and your model is the network alone: "
                "load it with load_model(path, arch=..., dataset=...) or put the normalisation "
                "layer in front of your network, nn.Sequential(NormalizeLayer(mean, std), "
                "network)"
            ) from None
        raise


def _describe(checkpoint: object) -> str:
    if isinstance(checkpoint, Mapping):
        keys = sorted(map(str, checkpoint))
        more = f", ... ({len(keys) - 6} more)" if len(keys) > 6 else ""
        return f"a dict with the keys [{', '.join(repr(k) for k in keys[:6])}{more}]"
    return f"a {type(checkpoint).__name__}"


def _is_state_dict(value: object) -> TypeGuard[Mapping[str, Any]]:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(
            isinstance(k, str) and (isinstance(v, Tensor) or k.endswith("_extra_state"))
            for k, v in value.items()
        )
    )


def _weights_of(checkpoint: object, source: str) -> Mapping[str, Any] | nn.Module:
    """The state dict (or the whole module) a loaded file holds, or an error naming the fix."""
    if isinstance(checkpoint, nn.Module) or _is_state_dict(checkpoint):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            entry = checkpoint.get(key)
            if isinstance(entry, nn.Module) or _is_state_dict(entry):
                return entry
    raise ValueError(
        f"{source} holds {_describe(checkpoint)}, which is none of the layouts rsmooth loads: a "
        "research checkpoint ({'arch', 'state_dict', ...}), a state dict (parameter names -> "
        "tensors), a dict with the state dict under 'state_dict' or 'model', or (trusted=True) "
        "a whole nn.Module. If the weights are under another key, load them yourself and save "
        "them alone: torch.save(torch.load(path)[key], 'weights.pt'), then load 'weights.pt'"
    )


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    dataset: str | None = None,
    model: nn.Module | None = None,
    trusted: bool = False,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load a checkpoint file, whatever its usual layout; returns the model in eval mode.

    The file is read once with ``torch.load(path, weights_only=True)`` (it cannot run code),
    or, with ``trusted=True``, with ``weights_only=False``. It may hold:

    - a **research checkpoint** ``{"epoch", "arch", "state_dict", "optimizer"}`` (Cohen et al.
      and the codebases built on it): the model is :func:`get_model` ``(arch, dataset)`` with
      ``arch`` from the file;
    - a **plain state dict**, or one under a ``"state_dict"`` or ``"model"`` entry: give the
      network with ``arch`` (and ``dataset``) for a research architecture, or ``model`` for your
      own module;
    - with ``trusted=True``, a **whole** ``nn.Module`` (``torch.save(model)``), returned as it is.

    Keys saved under ``DataParallel``/``DistributedDataParallel`` (``module.``) or
    ``torch.compile`` (``_orig_mod.``) load as they are, in either direction (the research
    ``resnet50`` has a ``module.`` level); a research architecture also takes the state dict of
    its bare network (without the normalisation layer, which has no weights), and adds the
    normalisation for ``dataset`` (so does a ``model`` in that layout,
    ``nn.Sequential(normalize, network)``). Anything else raises a ``ValueError`` that names the fix. The
    same loader serves ``rsmooth certify --checkpoint`` (``--trust-checkpoint`` for
    ``trusted=True``).

    Args:
        path: The checkpoint file.
        arch: A research architecture (one of :data:`ARCHITECTURES`) for a plain state dict;
            for a research checkpoint it must agree with the file's ``"arch"``.
        dataset: The dataset the model was trained on (a key of :data:`NORMALIZATION`): it
            decides the normalisation layer and must have the architecture's number of classes
            and channels. Required with a research checkpoint or ``arch``.
        model: Your own module to load the weights into (in place; it is returned), instead of a
            research architecture.
        trusted: Read the file with ``weights_only=False``, which **runs code from the file**
            (any pickled object): only for files from a source you trust. Default: ``False``.
        map_location: Where to load the tensors and put a model built here (your ``model``
            stays on its device). Default: ``"cpu"``.

    Returns:
        The model in eval mode: ``nn.Sequential(normalize, network)`` for a research
        architecture, your ``model``, or the saved module.

    Raises:
        FileNotFoundError: No file at ``path``.
        TypeError: An argument has the wrong type.
        ValueError: torch.load cannot read the file (its reason in full, and for a file that
            ``weights_only=True`` refuses, the opt-in and how to save a plain state dict); the
            file holds no layout above; a plain state dict without ``arch`` or ``model``;
            ``arch`` and ``dataset`` that disagree with each other or with the file; missing or
            unexpected keys or other shapes; ``model`` together with ``arch`` or ``dataset``.

    Example:
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> network = get_model("lenet", "mnist")[1]  # a bare network, saved from DataParallel
        >>> state = {f"module.{k}": v for k, v in network.state_dict().items()}
        >>> torch.save({"model": state, "epoch": 3}, os.path.join(folder, "net.pt"))
        >>> loaded = load_model(os.path.join(folder, "net.pt"), arch="lenet", dataset="mnist")
        >>> loaded.training, torch.equal(loaded[1].fc2.bias, network.fc2.bias)
        (False, True)
    """
    if arch is not None:
        _check_arch(arch)
    if dataset is not None:
        _check_dataset(dataset)
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if arch is not None or dataset is not None:
            raise ValueError(
                "give either model= (your own module, with its own normalisation) or arch= and "
                "dataset= (a research architecture), not both"
            )
    if not isinstance(trusted, bool):
        raise TypeError(f"trusted must be a bool, got {type(trusted).__name__}")
    source = os.fspath(path)
    checkpoint = _read_checkpoint(path, map_location, trusted=trusted)
    if is_research_checkpoint(checkpoint):
        weights: Mapping[str, Any] | nn.Module = checkpoint["state_dict"]
        if arch is not None and arch != checkpoint["arch"]:
            raise ValueError(
                f"arch {arch!r} disagrees with the checkpoint's arch {checkpoint['arch']!r} "
                f"({source}); leave arch out for a research checkpoint"
            )
        arch = arch if model is not None else str(checkpoint["arch"])
    else:
        weights = _weights_of(checkpoint, source)
    if isinstance(weights, nn.Module):
        if model is not None or arch is not None or dataset is not None:
            raise ValueError(
                f"{source} holds a whole {type(weights).__name__} (saved with torch.save(model)), "
                "which is returned as it is: leave out model=, arch= and dataset="
            )
        return weights.to(map_location).eval()
    research = model is None
    if model is None:
        if arch is None:
            keys = list(weights)
            more = f", ... ({len(keys) - 3} more)" if len(keys) > 3 else ""
            raise ValueError(
                f"{source} holds a plain state dict (keys {keys[:3]}{more}) without the research "
                "format's 'arch', so the network is unknown: give arch= and dataset= for a "
                f"research architecture ({', '.join(ARCHITECTURES)}) or model= for your own "
                "module (command line: --model rsmooth.models:get_model --model-kwargs "
                '\'{"arch": "...", "dataset": "..."}\', or --model package.module:factory)'
            )
        model = get_model(arch, _check_dataset(dataset))
    _load_into(model, weights, f"the state dict in {source}")
    if research:
        model = model.to(map_location)
    return model.eval()


def load_research_checkpoint(
    path: str | os.PathLike[str],
    dataset: str | None = None,
    *,
    map_location: str | torch.device = "cpu",
    trusted: bool = False,
) -> nn.Sequential:
    """Load a checkpoint in the research code's format; returns the model in eval mode.

    The file is ``{"epoch", "arch", "state_dict", "optimizer"}`` as written by the training script
    of Cohen et al. and the codebases built on it. The architecture comes from ``"arch"``, the
    normalisation layer from ``dataset`` (the file does not record it). The file is read with
    ``torch.load(..., weights_only=True)``, so it cannot run code (unless ``trusted=True``).
    Feed the model pixels in ``[0, 1]`` and use the sigma it was trained with. For the other
    layouts (a plain state dict, a bare network, your own module) use :func:`load_model`, which
    this function calls.

    Args:
        path: The checkpoint file (``checkpoint.pth.tar``).
        dataset: The dataset the model was trained on, one of the keys of
            :data:`NORMALIZATION`, with the architecture's number of classes. Required;
            ``None`` raises with the list.
        map_location: Where to load the tensors and put the model. Default: ``"cpu"``.
        trusted: Read the file with ``weights_only=False``, which runs code from the file (for a
            checkpoint that also saved e.g. an ``argparse.Namespace``, from a trusted source
            only). Default: ``False``.

    Returns:
        ``nn.Sequential(normalize, network)`` in eval mode, as :func:`get_model` builds it.

    Raises:
        ValueError: ``dataset`` missing or unknown, or with another number of classes or
            channels than the architecture; the file cannot be read (torch's reason in full,
            with the opt-in for a file ``weights_only=True`` refuses), or has no ``"arch"`` /
            ``"state_dict"``; unknown architecture; missing or unexpected state-dict keys (the
            first few of each) or tensors of other shapes.
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
    checkpoint = _read_checkpoint(path, map_location, trusted=trusted)
    if not is_research_checkpoint(checkpoint):
        raise ValueError(
            f"{os.fspath(path)} is not a research-format checkpoint (a dict with 'arch' and "
            f"'state_dict'); it holds {_describe(checkpoint)}: load it with "
            "rsmooth.models.load_model(path, arch=..., dataset=...) or load_model(path, "
            "model=your_module)"
        )
    model = get_model(checkpoint["arch"], dataset)
    _load_into(model, checkpoint["state_dict"], f"the state_dict of {os.fspath(path)}")
    return model.to(map_location).eval()
