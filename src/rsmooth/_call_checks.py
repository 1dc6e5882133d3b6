"""Checks of one call of a criterion or an attack: the labels, and the model's first output.

A criterion or an attack learns the number of classes ``K`` only when the model has run. A forward
hook, registered for the call, checks the first output before any loss uses it: a logits tensor
(not a tuple, dict or Hugging Face-style object) and labels in ``[0, K)`` (or a prior with ``K``
columns). Checking before the loss matters on CUDA, where an out-of-range label is a device-side
assert that ruins the process instead of an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from rsmooth._hints import model_error, output_type_message, unbatched_hint
from rsmooth._validation import check_targets

__all__ = [
    "CallError",
    "OutputCheck",
    "check_call_targets",
    "checking_outputs",
    "reraise_with_hint",
]


class CallError(Exception):
    """Mixin of the errors rsmooth raises about a call from inside the model's forward hook.

    They are about the call itself, so they are not wrapped in the unbatched-image hint.
    """


class _OutputTypeError(CallError, TypeError):
    pass


class _LabelError(CallError, ValueError):
    pass


class OutputCheck:
    """Forward hook: the first output of a call is a logits tensor that fits the labels.

    Args:
        max_label: The largest label of the call (``None``: no label check).
        num_classes: The number of classes the call's per-class inputs have (a prior's columns),
            as ``(name, K)``; ``None``: no such check.
        first: Called with the first output once it passed the checks (e.g. the softmax check).
        not_a_tensor: The message for an output that is not a tensor, for models that return
            something other than logits (a denoiser); ``None``: the logits message.
    """

    def __init__(
        self,
        max_label: int | None = None,
        *,
        num_classes: tuple[str, int] | None = None,
        first: Callable[[Tensor], None] | None = None,
        not_a_tensor: str | None = None,
    ) -> None:
        self.max_label = max_label
        self.num_classes = num_classes
        self.first = first
        self.not_a_tensor = not_a_tensor
        self.done = False

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.done:  # the first forward of the call is enough
            return
        if not isinstance(output, Tensor):
            if self.not_a_tensor is not None:
                raise _OutputTypeError(f"{self.not_a_tensor}, got {type(output).__name__}")
            raise _OutputTypeError(output_type_message(output))
        self.done = True
        if output.dim() == 2:
            classes = int(output.shape[1])
            if self.max_label is not None and self.max_label >= classes:
                raise _LabelError(
                    f"targets must be class indices in [0, {classes}) for a model with "
                    f"{classes} logits, got the label {self.max_label}"
                )
            if self.num_classes is not None and self.num_classes[1] != classes:
                name, got = self.num_classes
                raise _LabelError(
                    f"{name} must have one column per class of the model ({classes} logits), "
                    f"got {got} columns"
                )
        if self.first is not None:
            self.first(output)


@contextmanager
def checking_outputs(model: nn.Module, check: OutputCheck) -> Iterator[None]:
    """Run ``check`` on the model's outputs while the block runs (a no-op for TorchScript)."""
    try:
        handle = model.register_forward_hook(check)
    except RuntimeError:  # e.g. TorchScript modules take no Python hooks
        handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def reraise_with_hint(error: Exception, inputs: Tensor) -> None:
    """Raise the :func:`~rsmooth._hints.model_error` for ``error``, if there is one.

    Errors rsmooth raised about the call (:class:`CallError`) and errors without a hint return,
    and the caller re-raises them unchanged.
    """
    if isinstance(error, CallError):
        return
    hinted = model_error(error, inputs)
    if hinted is not None:
        raise hinted from error


def check_call_targets(targets: object, inputs: Tensor) -> tuple[Tensor, int]:
    """Check the labels of a call; return them as ``int64`` and the largest label.

    A shape mismatch with a 3-D ``inputs`` adds the unbatched-image hint: ``[C, H, W]`` is read
    as a batch of ``C`` inputs, so one label does not match it.
    """
    try:
        checked = check_targets("targets", targets, inputs.shape[0], inputs.device)
    except ValueError as error:
        hint = unbatched_hint(inputs)
        if hint and "shape" in str(error):
            raise ValueError(f"{error}; {hint} (and the targets with targets.reshape(1))") from None
        raise
    if checked.dtype != torch.int64:
        checked = checked.long()
    return checked, int(checked.max())
