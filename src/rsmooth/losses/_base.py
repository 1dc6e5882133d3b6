"""The shared base of every training criterion."""

from __future__ import annotations

import difflib
import functools
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsmooth._validation import (
    DEFAULT_INPUT_RANGE,
    check_generator,
    check_input_range,
    check_input_range_arg,
    check_inputs,
    check_int,
    check_model,
    check_positive,
    check_targets,
)

#: Error messages of a model that got input of the wrong shape (conv, linear, reshape).
_SHAPE_ERROR = re.compile(r"channels|shape|size|mat1 and mat2|dimension|Expected \d", re.I)


def _output_hint(output: Any) -> str:
    """How to turn a non-tensor model output into logits, for the error message."""
    if isinstance(output, (tuple, list)):
        return "e.g. wrap the model to return output[0]"
    if isinstance(output, Mapping):
        key = "'logits'" if "logits" in output else "the logits' key"
        return f"e.g. wrap the model to return output[{key}]"
    if hasattr(output, "logits"):
        return "e.g. wrap the model to return output.logits (a Hugging Face-style output)"
    return "wrap the model so that forward returns the logits tensor"


__all__ = ["SmoothingCriterion"]


class SmoothingCriterion(nn.Module):
    """Base class of the rsmooth criteria: ``loss = criterion(model, inputs, targets)``.

    Subclasses validate their hyperparameters in ``__init__`` (after calling this one), list
    them in ``_repr_fields`` for :meth:`extra_repr`, name their per-term values in
    ``term_names``, and implement :meth:`_loss`. The base class validates the call, clears and
    records :attr:`last_terms`, and never stores the model on ``self``.

    **Checks for common mistakes.** Each call checks that the inputs lie in ``input_range``
    (default :math:`[0, 1]`; 8-bit pixels or a normalisation outside the model are errors),
    that the model returns a logits tensor (a tuple, dict or Hugging Face-style output is a
    ``TypeError`` with the fix), and converts integer labels of any dtype to ``int64``. It warns
    once per criterion when the model is in ``eval()`` mode with gradients enabled (call
    ``model.train()`` in the training loop; a validation pass under ``torch.no_grad()`` is fine) and when the model's outputs look like probabilities (a final softmax: the
    criteria expect logits). Setting an attribute the criterion does not have (a typo such as
    ``criterion.wramup = 0.1``) raises ``AttributeError`` instead of being ignored.

    **Schedules.** Call :meth:`set_epoch` at the start of every epoch: it applies the
    criterion's official schedule (warm-ups, deferred terms), or does nothing for criteria
    without one.

    Args:
        sigma: Noise standard deviation (in the model's input space).
        generator: Optional ``torch.Generator`` for all the noise this criterion draws; it must be
            on the inputs' device.
        input_range: ``(low, high)`` every input entry must lie in, or ``None`` to turn the
            check off (for inputs in another space). Default: ``(0.0, 1.0)``.
    """

    #: Names of the per-term values recorded in :attr:`last_terms` after each call.
    term_names: ClassVar[tuple[str, ...]] = ()
    #: Hyperparameters shown by :meth:`extra_repr`, in constructor order.
    _repr_fields: ClassVar[tuple[str, ...]] = ("sigma",)
    #: Whether inputs must lie in [0, 1] (criteria that attack in pixel space).
    _unit_box: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _sealing(init)  # type: ignore[method-assign]

    def __init__(
        self,
        sigma: float,
        *,
        generator: torch.Generator | None = None,
        input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE,
    ) -> None:
        super().__init__()
        self.sigma = check_positive("sigma", sigma)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.input_range = check_input_range_arg("input_range", input_range)
        #: The epoch of the last :meth:`set_epoch` call (``None`` before the first).
        self.epoch: int | None = None
        self._last_terms: dict[str, Tensor] = {}
        self._warned: set[str] = set()
        self._outputs_checked = False

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            not name.startswith("_")
            and self.__dict__.get("_sealed", False)
            and not hasattr(self, name)
        ):
            known = [k for k in dir(self) if not k.startswith("_")]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}{hint} (setting a new "
                "attribute on a criterion is refused, because a misspelt hyperparameter or "
                "schedule would otherwise be silently ignored)"
            )
        super().__setattr__(name, value)

    def set_epoch(self, epoch: int) -> None:
        """Apply this criterion's official schedule for training epoch ``epoch`` (0-based).

        Call it at the start of every epoch, before the first batch. Criteria without a
        schedule only record the epoch; each criterion's docstring says what its schedule
        does (SmoothMix's eta warm-up, SmoothAdv's epsilon warm-up, MACER's deferred lambda).

        Args:
            epoch: The epoch about to start, counting from 0.

        Raises:
            TypeError: ``epoch`` is not an integer.
            ValueError: ``epoch`` is negative.
        """
        self.epoch = check_int("epoch", epoch, min=0)
        self._apply_schedule(self.epoch)

    def _apply_schedule(self, epoch: int) -> None:
        """Set the scheduled attributes for ``epoch``; the base class has no schedule."""

    def _warn_once(self, key: str, message: str, *, stacklevel: int = 2) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)

    @property
    def last_terms(self) -> Mapping[str, float]:
        """The named terms of the last call, as floats (converted only when read)."""
        return {name: float(value) for name, value in self._last_terms.items()}

    def _record(self, **terms: Tensor) -> None:
        self._last_terms = {name: value.detach() for name, value in terms.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_fields)

    def forward(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        """Compute the loss of ``model`` on a batch.

        Args:
            model: The base classifier being trained (returns logits ``[N, K]``).
            inputs: Clean inputs ``[B, *]``.
            targets: Class indices ``[B]``.

        Returns:
            A 0-d tensor; ``backward()`` sends gradients into the model's parameters.
        """
        self._last_terms = {}
        check_model(model)
        check_inputs("inputs", inputs, unit_box=self._unit_box)
        if not self._unit_box:
            check_input_range("inputs", inputs, self.input_range)
        check_targets("targets", targets, inputs.shape[0], inputs.device)
        check_generator(self.generator, inputs.device)
        if targets.dtype != torch.int64:
            targets = targets.long()
        if not model.training and torch.is_grad_enabled():  # no_grad: a validation pass
            self._warn_once(
                "eval",
                f"{type(self).__name__} was called with the model in eval() mode, so it trains "
                "with eval-mode BatchNorm and dropout; call model.train() at the start of each "
                "training epoch (after any evaluation)",
                stacklevel=4,  # forward <- Module._call_impl <- _wrapped_call_impl <- user
            )
        handle = None
        if not self._outputs_checked:
            try:
                handle = model.register_forward_hook(self._check_output_hook)
            except RuntimeError:  # e.g. TorchScript modules take no Python hooks
                handle = None
        try:
            return self._loss(model, inputs, targets)
        except RuntimeError as error:
            if inputs.dim() == 3 and _SHAPE_ERROR.search(str(error)):
                first = str(error).strip().splitlines()[0]
                raise ValueError(
                    f"the model failed on inputs of shape {tuple(inputs.shape)} ({first}); if "
                    "inputs is one image without the batch dimension, use inputs.unsqueeze(0) "
                    "(and targets of shape (1,)): the criteria take a batch [B, *]"
                ) from error
            raise
        finally:
            if handle is not None:
                handle.remove()

    def _check_output_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook (first call only): logits tensor, and no final softmax."""
        if self._outputs_checked:  # the first forward of the first call is enough
            return
        if not isinstance(output, Tensor):
            raise TypeError(
                f"model must return a logits tensor [N, K], got {type(output).__name__}; "
                f"{_output_hint(output)}"
            )
        self._outputs_checked = True
        if output.dim() == 2 and output.shape[1] >= 2 and not output.is_complex():
            rows = output.detach().float()
            if bool((rows >= 0).all()) and bool(
                torch.allclose(rows.sum(dim=1), torch.ones_like(rows[:, 0]), atol=1e-4)
            ):
                self._warn_once(
                    "softmax",
                    f"{type(self).__name__}: the model's outputs are non-negative rows summing "
                    "to 1, i.e. probabilities; the criteria expect logits (unnormalised "
                    "scores). Remove the final softmax from the model",
                )

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:  # generators do not pickle
        state = self.__dict__.copy()
        state["generator"] = None
        return state


def _sealing(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a criterion's ``__init__``: once the outermost one returns, new attributes are refused."""

    @functools.wraps(init)
    def wrapper(self: SmoothingCriterion, *args: Any, **kwargs: Any) -> None:
        depth = self.__dict__.get("_init_depth", 0)
        object.__setattr__(self, "_init_depth", depth + 1)
        try:
            init(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "_init_depth", depth)
        if depth == 0:
            object.__setattr__(self, "_sealed", True)

    return wrapper
