"""The shared base of every training criterion."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsmooth._call_checks import (
    OutputCheck,
    check_call_targets,
    checking_outputs,
    reraise_with_hint,
)
from rsmooth._settings import Sealed, Setting
from rsmooth._validation import (
    DEFAULT_INPUT_RANGE,
    check_base_model,
    check_generator,
    check_generator_arg,
    check_input_range,
    check_input_range_arg,
    check_inputs,
    check_int,
    check_positive,
    optional,
)

__all__ = ["SmoothingCriterion"]

#: A per-call check of extra arguments (e.g. CAT-RS's prior) against the validated inputs; it
#: returns ``(name, K)`` when the argument has one column per class, to compare with the logits.
ExtraCheck = Callable[[Tensor], "tuple[str, int] | None"]


def check_unit_box_range(name: str, value: Any) -> tuple[float, float] | None:
    """``input_range`` of the criteria that attack in pixel space: only ``(0.0, 1.0)``."""
    checked = check_input_range_arg(name, value)
    if checked != DEFAULT_INPUT_RANGE:
        raise ValueError(
            f"{name} must be (0.0, 1.0) for this criterion, which attacks in pixel space and "
            f"projects onto [0, 1], got {value!r}"
        )
    return checked


class SmoothingCriterion(Sealed, nn.Module):
    """Base class of the rsmooth criteria: ``loss = criterion(model, inputs, targets)``.

    Subclasses declare their hyperparameters as validated settings (class attributes
    ``name = Setting(check)``), assign them in ``__init__`` (after calling this one), list them
    in ``_repr_fields`` for :meth:`extra_repr`, name their per-term values in ``term_names``,
    and implement :meth:`_loss`. The base class validates the call, clears and records
    :attr:`last_terms`, and never stores the model on ``self``.

    **Hyperparameters are checked whenever they are assigned.** Every constructor argument is
    a public attribute, and assigning it later (``criterion.sigma = 0.25``) runs the
    constructor's check: a refused value raises the constructor's ``TypeError`` or
    ``ValueError`` and leaves the old value in place. Setting an attribute the criterion does
    not have (a typo such as ``criterion.wramup = 0.1``) raises ``AttributeError`` instead of
    being ignored.

    **Checks for common mistakes.** Each call checks that the inputs lie in ``input_range``
    (default :math:`[0, 1]`; 8-bit pixels or a normalisation outside the model are errors),
    that the labels are class indices of the model (``[0, K)`` for ``K`` logits), that the
    model returns a logits tensor (a tuple, dict or Hugging Face-style output is a
    ``TypeError`` with the fix), and converts integer labels of any dtype to ``int64``. A model
    that fails on a 3-D batch gets the hint to add the batch dimension (``inputs.unsqueeze(0)``):
    the criteria read every tensor as a batch. It warns once per criterion when the model is in
    ``eval()`` mode with gradients enabled (call ``model.train()`` in the training loop; a
    validation pass under ``torch.no_grad()`` is fine) and when the model's outputs look like
    probabilities (a final softmax: the criteria expect logits).

    **Schedules.** Call :meth:`set_epoch` at the start of every epoch: it applies the
    criterion's official schedule (warm-ups, deferred terms), or does nothing for criteria
    without one. The rule is the same for every criterion: **the attribute you assign is the
    value the schedule works from** (SmoothAdv's full ``epsilon``, SmoothMix's full ``eta``,
    MACER's full ``lbd``, the adaptive-noise ``adversarial`` switch); :meth:`set_epoch` never
    changes it. The values in force for the current epoch are computed from it and can be read,
    for logging, in :attr:`scheduled`. A criterion whose schedule is configured but whose
    :meth:`set_epoch` was never called trains with the unscheduled values and warns once, at
    its first call, naming :meth:`set_epoch`.

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
    #: What the model returns when not logits (e.g. "a tensor (the denoised inputs)"): then its
    #: outputs are only checked to be a tensor, not against the labels.
    _returns: ClassVar[str | None] = None

    sigma = Setting(check_positive)
    generator = Setting(check_generator_arg)
    input_range = Setting(check_input_range_arg)
    #: The epoch of the last :meth:`set_epoch` call (``None`` before the first).
    epoch = Setting(optional(functools.partial(check_int, min=0)))

    def __init__(
        self,
        sigma: float,
        *,
        generator: torch.Generator | None = None,
        input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE,
    ) -> None:
        super().__init__()
        self.sigma = sigma
        self.generator = generator
        self.input_range = input_range
        self.epoch = None
        self._last_terms: dict[str, Tensor] = {}
        self._warned: set[str] = set()
        self._outputs_checked = False

    def set_epoch(self, epoch: int) -> None:
        """Apply this criterion's official schedule for training epoch ``epoch`` (0-based).

        Call it at the start of every epoch, before the first batch. It records the epoch, from
        which the schedule's values are computed (see :attr:`scheduled`); it never changes a
        hyperparameter you assigned. Criteria without a schedule only record the epoch; each
        criterion's docstring says what its schedule does (SmoothMix's eta warm-up, SmoothAdv's
        epsilon warm-up, MACER's deferred lambda, the adaptive-noise adversary's start).

        Args:
            epoch: The epoch about to start, counting from 0.

        Raises:
            TypeError: ``epoch`` is not an integer.
            ValueError: ``epoch`` is negative.
        """
        self.epoch = epoch

    @property
    def scheduled(self) -> Mapping[str, Any]:
        """The values the schedule gives for the current :attr:`epoch`, read-only, for logging.

        Keys are the names of the scheduled quantities (e.g. ``{"epsilon": 0.05}`` for
        SmoothAdv in epoch 0); empty for a criterion without a schedule. Before the first
        :meth:`set_epoch` they are the unscheduled values, which the criterion then uses.
        """
        return MappingProxyType(self._scheduled_values())

    def _scheduled_values(self) -> dict[str, Any]:
        """The schedule's values for :attr:`epoch`; the base class has no schedule."""
        return {}

    def _unstepped_schedule(self) -> tuple[str, str, str] | None:
        """``(what, consequence, how to turn it off)`` when a schedule is configured, else None."""
        return None

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
            targets: Class indices ``[B]``, each in ``[0, K)``.

        Returns:
            A 0-d tensor; ``backward()`` sends gradients into the model's parameters.
        """
        return self._checked_call(model, inputs, targets, self._loss)

    def _checked_call(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        loss: Callable[[nn.Module, Tensor, Tensor], Tensor],
        extra_check: ExtraCheck | None = None,
    ) -> Tensor:
        """Validate a call, run ``loss(model, inputs, targets)`` under the output check."""
        self._last_terms = {}
        check_base_model(model)
        check_inputs("inputs", inputs, unit_box=self._unit_box)
        if not self._unit_box:
            check_input_range("inputs", inputs, self.input_range)
        targets, max_label = check_call_targets(targets, inputs)
        check_generator(self.generator, inputs.device)
        per_class = None if extra_check is None else extra_check(inputs)
        self._check_call(inputs)
        unstepped = self._unstepped_schedule() if self.epoch is None else None
        if unstepped is not None:
            what, consequence, turn_off = unstepped
            self._warn_once(
                "schedule",
                f"{type(self).__name__} has a schedule ({what}), but set_epoch was never "
                f"called, so {consequence}; call criterion.set_epoch(epoch) at the start of "
                f"every epoch, or pass {turn_off}",
                stacklevel=5,  # _checked_call <- forward <- Module._call_impl <- _wrapped <- user
            )
        if not model.training and torch.is_grad_enabled():  # no_grad: a validation pass
            self._warn_once(
                "eval",
                f"{type(self).__name__} was called with the model in eval() mode, so it trains "
                "with eval-mode BatchNorm and dropout; call model.train() at the start of each "
                "training epoch (after any evaluation)",
                stacklevel=5,
            )
        if self._returns is None:
            check = OutputCheck(
                max_label,
                num_classes=per_class,
                first=None if self._outputs_checked else self._check_first_output,
            )
        else:  # a model that returns something else than logits (a denoiser's images)
            check = OutputCheck(not_a_tensor=f"the model must return {self._returns}")
        with checking_outputs(model, check):
            try:
                return loss(model, inputs, targets)
            except Exception as error:
                reraise_with_hint(error, inputs)
                raise

    def _check_call(self, inputs: Tensor) -> None:
        """Checks of the hyperparameters against the call's inputs (e.g. epsilon's size)."""

    def _check_first_output(self, output: Tensor) -> None:
        """The first output of the first call: warn about a final softmax."""
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
