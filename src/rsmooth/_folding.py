"""An inference copy of a model with its eval-mode BatchNorm layers folded into the layers before.

In eval mode a BatchNorm layer is a fixed per-channel affine map, so a convolution (or linear
layer) followed by one equals a single convolution with rescaled weights and a shifted bias. On the
CPU the BatchNorm layers of a CIFAR ResNet take about a fifth of the forward pass; folding them
removes that time and changes the logits only by rounding.

:func:`torch.nn.utils.fusion.fuse_conv_bn_eval` (and its linear form) computes the folded layer;
the pairs are found on a :func:`torch.fx.symbolic_trace` of a deep copy. (torch's own
``torch.fx.experimental.optimization.fuse`` does the same but its module loads deprecated
TorchScript code on import, and it folds a layer that is called at several places.) A module that
``torch.fx`` cannot trace (Python control flow on its input, say) is copied shallowly and its
children are folded one by one, so the module's own ``forward`` still runs. The user's model is
never modified: the copy holds its own parameters, and :class:`FoldedCopy` rebuilds it whenever a
parameter or buffer of the model changes (values, device or dtype), its modules are replaced, or
a plain attribute of a module (a number, string, bool or None, or a tuple of those: the settings a
trace bakes in) takes another value.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = ["FoldedCopy", "count_batchnorms", "fold_batchnorm", "has_hooks"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: (layer, BatchNorm) pairs that fold, by exact type: a subclass may compute something else
_PAIRS = {
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv3d, nn.BatchNorm3d),
    (nn.Linear, nn.BatchNorm1d),
}


def count_batchnorms(model: nn.Module) -> int:
    """The BatchNorm layers of ``model`` that keep running statistics (the foldable kind)."""
    return sum(
        isinstance(module, _BATCHNORMS)
        and module.track_running_stats
        and module.running_mean is not None
        for module in model.modules()
    )


def has_hooks(model: nn.Module) -> bool:
    """Whether any forward hook (global, or on a module of ``model``) could observe a layer.

    A folded copy would skip hooks on the layers it removes, so models with hooks are not folded.
    """
    module_hooks = torch.nn.modules.module
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return True
    return any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (in eval mode) with BatchNorm layers folded, and how many were folded.

    ``model`` itself when it has none to fold. Parts that cannot be traced keep their own code;
    their children are folded one by one.
    """
    before = count_batchnorms(model)
    if before == 0:
        return model, 0
    try:
        folded, count = _fold_traced(model)
    except Exception:  # cannot trace (or copy) it: fold its children under its own forward
        children = list(model._modules.items())
        if not children:
            return model, 0
        clone = copy.copy(model)  # shares parameters, buffers and hooks; only children differ
        modules: dict[str, nn.Module | None] = {}
        count = 0
        for name, child in children:
            if child is None:
                modules[name] = None
                continue
            modules[name], folded_here = fold_batchnorm(child)
            count += folded_here
        if count == 0:
            return model, 0
        clone.__dict__["_modules"] = modules
        return clone, count
    return (folded, count) if count else (model, 0)


def _fold_traced(model: nn.Module) -> tuple[torch.fx.GraphModule, int]:
    """A traced deep copy of ``model`` with BatchNorm layers folded, and how many were folded.

    A BatchNorm call folds into the layer call that produces its only argument when that output
    has no other use and the layer is called nowhere else (a layer called twice would change at
    both places).
    """
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(traced.named_modules())
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    count = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if (
            not isinstance(source, torch.fx.Node)
            or source.op != "call_module"
            or len(source.users) != 1
            or calls[str(source.target)] != 1
        ):
            continue
        target = str(source.target)
        layer, norm = modules[target], modules[str(node.target)]
        if (type(layer), type(norm)) not in _PAIRS or not norm.track_running_stats:
            continue
        if norm.running_mean is None or norm.running_var is None:
            continue
        try:
            if isinstance(layer, nn.Linear):
                fused: nn.Module = fuse_linear_bn_eval(layer, norm)
            else:
                fused = fuse_conv_bn_eval(layer, norm)
        except (AssertionError, RuntimeError, ValueError):  # shapes that do not fold
            continue
        parent, _, name = target.rpartition(".")
        setattr(traced.get_submodule(parent), name, fused)
        modules[target] = fused
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        count += 1
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced, count


_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def _plain(value: object) -> bool:
    if isinstance(value, tuple):
        return all(_plain(item) for item in value)
    return isinstance(value, _PLAIN)


def _settings(module: nn.Module) -> dict[str, object]:
    """A module's plain attributes, but its train/eval flag (the engine always runs eval)."""
    return {k: v for k, v in vars(module).items() if k != "training" and _plain(v)}


def _state(model: nn.Module) -> tuple[list[nn.Module], list[dict[str, object]], list[Tensor]]:
    modules = list(model.modules())
    tensors = [t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()]
    return modules, [_settings(module) for module in modules], tensors


def _same_tensors(current: Sequence[Tensor], snapshot: Sequence[Tensor]) -> bool:
    return len(current) == len(snapshot) and all(
        a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(current, snapshot, strict=True)
    )


class FoldedCopy:
    """The folded copy of one model, rebuilt when the model's modules or tensors change.

    :meth:`lookup` returns the cached entry while the model's modules are the same objects with
    the same plain attributes, and its parameters and buffers have the same values (compared with
    a snapshot, so changes through ``.data`` or by a BatchNorm's own updates are seen too);
    :meth:`store` records a new one.
    """

    def __init__(self) -> None:
        self._modules: list[nn.Module] = []
        self._settings: list[dict[str, object]] = []
        self._snapshot: list[Tensor] = []
        self._entry: tuple[nn.Module, int] | None = None

    def lookup(self, model: nn.Module) -> tuple[nn.Module, int] | None:
        """The stored ``(model to run, layers folded)`` while ``model`` is unchanged, else None."""
        if self._entry is None:
            return None
        modules, settings, tensors = _state(model)
        if len(modules) != len(self._modules) or any(
            a is not b for a, b in zip(modules, self._modules, strict=True)
        ):
            return None
        if settings != self._settings:
            return None
        if not _same_tensors(tensors, self._snapshot):
            return None
        return self._entry

    def store(self, model: nn.Module, entry: tuple[nn.Module, int]) -> None:
        """Remember ``entry`` for ``model`` as it is now."""
        modules, settings, tensors = _state(model)
        self._modules, self._settings = modules, settings
        with torch.no_grad():
            self._snapshot = [t.detach().clone() for t in tensors]
        self._entry = entry

    def folded_layers(self) -> int:
        """How many BatchNorm layers the stored copy folded (0 when none is stored)."""
        return 0 if self._entry is None else self._entry[1]
