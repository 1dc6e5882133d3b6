"""An inference copy of a model with its eval-mode BatchNorm layers folded into the convolutions.

In eval mode a BatchNorm layer is a fixed per-channel affine map, so a convolution followed by one
equals a single convolution with rescaled weights and a shifted bias. On the CPU BatchNorm took a
fifth of the CIFAR ResNet-20's forward pass (profiled on two cores); folding it removes that time
and changes the logits only by rounding.

:func:`torch.nn.utils.fusion.fuse_conv_bn_eval` computes the folded layer; the pairs are found on a
:func:`torch.fx.symbolic_trace` of a deep copy. (torch's own
``torch.fx.experimental.optimization.fuse`` does the same but its module loads deprecated
TorchScript code on import, and it folds a layer that is called or read at several places.) Only
convolutions fold: a convolution's output always has its channels in dimension 1, where
BatchNorm normalises, while a linear layer's has them last. A module that ``torch.fx`` cannot
trace (Python control flow on its input, say) is copied shallowly and its children are folded one
by one, so the module's own ``forward`` still runs.

In the traced copy, an addition whose first operand is a convolution's output that nothing else
uses (a residual block's ``out + shortcut``) adds into that output in place when that gives the
same tensor (:func:`add_into`): one activation less to allocate per block, the values
bit-identical.

The user's model is never modified: the copy holds its own tensors, and :class:`FoldedCopy`
rebuilds it whenever the model's modules, their attributes, or the values of their tensors
change. A model with an attribute whose changes cannot be seen (an object of another kind, which
could change in place) is not folded.
"""

from __future__ import annotations

import copy
import enum
import functools
import operator
import types
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["FoldedCopy", "count_batchnorms", "fold_batchnorm", "has_hooks"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ADDITIONS = (operator.add, torch.add)
#: (convolution, BatchNorm) pairs that fold, by exact type: a subclass may compute something else
_PAIRS = {
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv3d, nn.BatchNorm3d),
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

    A BatchNorm call folds into the convolution call that produces its only argument when that
    output has no other use and the convolution is used nowhere else: neither called again nor
    its weights read (they would change there too).
    """
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(traced.named_modules())
    calls: dict[str, int] = {}
    read: set[str] = set()  # modules whose attributes the graph reads (tied weights)
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
        elif node.op == "get_attr":
            parts = str(node.target).split(".")
            read.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
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
            or str(source.target) in read
        ):
            continue
        target = str(source.target)
        layer, norm = modules[target], modules[str(node.target)]
        if (type(layer), type(norm)) not in _PAIRS or not norm.track_running_stats:
            continue
        if norm.running_mean is None or norm.running_var is None:
            continue
        try:
            fused = fuse_conv_bn_eval(layer, norm)
        except (AssertionError, RuntimeError, ValueError):  # shapes that do not fold
            continue
        parent, _, name = target.rpartition(".")
        setattr(traced.get_submodule(parent), name, fused)
        modules[target] = fused
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        count += 1
    if count:
        _add_in_place(traced, modules)
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced, count


def _add_in_place(traced: torch.fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    """Let each ``a + b`` whose ``a`` is a convolution's output used nowhere else add into it.

    The convolution's output is a new tensor that only this addition reads, so adding into it
    changes nothing else; :func:`add_into` checks at run time that the sum has its shape and
    dtype (otherwise it adds out of place). Only the first operand: ``a + b`` lays its result out
    like ``a`` where the two differ, as adding into ``a`` does, while ``b + a`` would follow
    ``b`` (a later ``view`` may depend on it).
    """
    for node in traced.graph.nodes:
        if (
            node.op != "call_function"
            or node.target not in _ADDITIONS
            or len(node.args) != 2
            or node.kwargs
        ):
            continue
        operand = node.args[0]  # the first: an out-of-place sum takes its layout from it too
        if (
            isinstance(operand, torch.fx.Node)
            and operand.op == "call_module"
            and type(modules.get(str(operand.target))) in _CONVOLUTIONS
            and len(operand.users) == 1
        ):
            node.target = add_into


def add_into(a: Tensor, b: object) -> Tensor:
    """``a + b``, computed into ``a`` when that gives the same tensor.

    That is when ``b`` is a tensor whose sum with ``a`` has ``a``'s shape and dtype, outside
    autograd. ``a`` must be read nowhere else.
    """
    if (
        isinstance(b, Tensor)
        and not torch.is_grad_enabled()
        and torch.result_type(a, b) == a.dtype
        and (b.shape == a.shape or torch.broadcast_shapes(a.shape, b.shape) == a.shape)
    ):  # (broadcast_shapes costs about 60 us, the comparison before it under 1 us)
        return a.add_(b)
    return a + b  # type: ignore[operator]


_INTERNAL = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping, and `training`
_VALUES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, enum.Enum)
_IDENTITIES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    functools.partial,  # its function and arguments cannot be rebound (its keywords dict could
    # change in place, which nothing does)
    type,
)


class Unfoldable(Exception):
    """A module attribute whose changes could not be seen: the model is not folded."""


class _Same:
    """Compares equal to a wrapper of the very same object (functions, classes)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.value is self.value

    __hash__ = None  # type: ignore[assignment]


def _describe(value: object, tensors: list[Tensor]) -> object:
    """What must stay equal for ``value`` to be unchanged; its tensors go to ``tensors``.

    Numbers, strings and the like by value; tensors by identity here and by value through
    ``tensors``; functions and classes by identity; tuples, lists and dicts of these item by
    item. Anything else raises :class:`Unfoldable`: an object that could change in place
    unseen.
    """
    if isinstance(value, _VALUES):
        return value
    if isinstance(value, Tensor):
        tensors.append(value)
        return _Same(value)
    if isinstance(value, _IDENTITIES):
        return _Same(value)
    if isinstance(value, (tuple, list)):
        return (type(value), [_describe(item, tensors) for item in value])
    if isinstance(value, dict) and all(isinstance(key, _VALUES) for key in value):
        return (dict, [(key, _describe(item, tensors)) for key, item in value.items()])
    raise Unfoldable(type(value).__name__)


def _state(model: nn.Module) -> tuple[list[nn.Module], list[object], list[Tensor]]:
    """The model's modules, their attributes (described) and every tensor they hold.

    Raises :class:`Unfoldable` for an attribute whose changes could not be seen (or a container
    that holds itself).
    """
    modules = list(model.modules())
    tensors: list[Tensor] = [t for _, t in model.named_parameters()]
    tensors += [t for _, t in model.named_buffers()]
    try:
        described: list[object] = [
            [(k, _describe(v, tensors)) for k, v in vars(module).items() if k not in _INTERNAL]
            for module in modules
        ]
    except RecursionError:
        raise Unfoldable("a container that holds itself") from None
    return modules, described, tensors


def _same_values(a: Tensor, b: Tensor) -> bool:
    """Equal device, dtype, shape and values, NaN equal to NaN."""
    if a.device != b.device or a.dtype != b.dtype or a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    if not (a.is_floating_point() or a.is_complex()):
        return False
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _same_tensors(current: Sequence[Tensor], snapshot: Sequence[Tensor]) -> bool:
    return len(current) == len(snapshot) and all(
        _same_values(a, b) for a, b in zip(current, snapshot, strict=True)
    )


class FoldedCopy:
    """The folded copy of one model, rebuilt when the model changes.

    :meth:`lookup` returns the stored entry while the model's modules are the same objects, their
    attributes are unchanged (:func:`_describe`) and, for an entry stored with ``watch_values``,
    every tensor they hold has the same values (compared with a snapshot, so changes through an
    optimizer, ``.data``, ``load_state_dict`` or a BatchNorm's own updates are seen);
    :meth:`store` records a new one. An entry whose decision depends on the structure only (there
    was nothing to fold) keeps no snapshot.
    """

    def __init__(self) -> None:
        self._modules: list[nn.Module] = []
        self._described: list[object] = []
        self._snapshot: list[Tensor] | None = None
        self._entry: tuple[nn.Module, int] | None = None

    def lookup(self, model: nn.Module) -> tuple[nn.Module, int] | None:
        """The stored ``(model to run, layers folded)`` while ``model`` is unchanged, else None.

        Raises :class:`Unfoldable` when the model has an attribute whose changes cannot be seen.
        """
        modules, described, tensors = _state(model)
        if self._entry is None:
            return None
        if len(modules) != len(self._modules) or any(
            a is not b for a, b in zip(modules, self._modules, strict=True)
        ):
            return None
        if described != self._described:
            return None
        if self._snapshot is not None and not _same_tensors(tensors, self._snapshot):
            return None
        return self._entry

    def store(self, model: nn.Module, entry: tuple[nn.Module, int], *, watch_values: bool) -> None:
        """Remember ``entry`` for ``model`` as it is now; ``watch_values``: also its tensors'."""
        modules, described, tensors = _state(model)
        self._modules, self._described, self._snapshot = modules, described, None
        if watch_values:
            with torch.no_grad():
                self._snapshot = [t.detach().clone() for t in tensors]
        self._entry = entry

    def clear(self) -> None:
        """Forget the stored entry (the model runs as it is now), and free its memory."""
        self._modules, self._described, self._snapshot, self._entry = [], [], None, None

    def folded_layers(self) -> int:
        """How many BatchNorm layers the stored copy folded (0 when none is stored)."""
        return 0 if self._entry is None else self._entry[1]
