"""The shared base of every training criterion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsmooth._validation import (
    check_generator,
    check_inputs,
    check_model,
    check_positive,
    check_targets,
)

__all__ = ["SmoothingCriterion"]


class SmoothingCriterion(nn.Module):
    """Base class of the rsmooth criteria: ``loss = criterion(model, inputs, targets)``.

    Subclasses validate their hyperparameters in ``__init__`` (after calling this one), list
    them in ``_repr_fields`` for :meth:`extra_repr`, name their per-term values in
    ``term_names``, and implement :meth:`_loss`. The base class validates the call, clears and
    records :attr:`last_terms`, and never stores the model on ``self``.

    Args:
        sigma: Noise standard deviation (in the model's input space).
        generator: Optional ``torch.Generator`` for all the noise this criterion draws; it must be
            on the inputs' device.
    """

    #: Names of the per-term values recorded in :attr:`last_terms` after each call.
    term_names: ClassVar[tuple[str, ...]] = ()
    #: Hyperparameters shown by :meth:`extra_repr`, in constructor order.
    _repr_fields: ClassVar[tuple[str, ...]] = ("sigma",)
    #: Whether inputs must lie in [0, 1] (criteria that attack in pixel space).
    _unit_box: ClassVar[bool] = False

    def __init__(self, sigma: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sigma = check_positive("sigma", sigma)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self._last_terms: dict[str, Tensor] = {}

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
        check_targets("targets", targets, inputs.shape[0], inputs.device)
        check_generator(self.generator, inputs.device)
        return self._loss(model, inputs, targets)

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:  # generators do not pickle
        state = self.__dict__.copy()
        state["generator"] = None
        return state
