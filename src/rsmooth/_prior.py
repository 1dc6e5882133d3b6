"""Checks of the per-example prior and of the confidence option (CAT-RS)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["Confidence", "check_confidence", "check_prior_rows"]

Confidence = Literal["model", "prior"]
_CONFIDENCES = ("model", "prior")


def check_prior_rows(
    prior: object, batch: int, device: torch.device, *, name: str = "prior"
) -> Tensor:
    """Check per-example distributions: a finite, non-negative ``[batch, K]`` tensor, rows sum 1.

    Args:
        prior: The value to check.
        batch: The batch size ``B`` it must match.
        device: The inputs' device.
        name: The argument's name in the messages.

    Returns:
        ``prior`` unchanged.

    Raises:
        TypeError: ``prior`` is missing or not a floating-point tensor.
        ValueError: Wrong shape or device, non-finite or negative entries, or a row whose sum
            differs from 1 by more than 1e-4.
    """
    if prior is None:
        raise TypeError(
            f"{name} must be given: call criterion(model, inputs, targets, prior=table[index]) "
            "with rows of rsmooth.training.prediction_table, got None"
        )
    if not isinstance(prior, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(prior).__name__}")
    if not prior.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {prior.dtype}")
    if prior.dim() != 2 or prior.shape[0] != batch or prior.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape [{batch}, K] with K >= 2 classes, got {tuple(prior.shape)}"
        )
    if prior.device != device:
        raise ValueError(f"{name} must be on the inputs' device {device}, got {prior.device}")
    if not bool(torch.isfinite(prior).all()):
        raise ValueError(f"{name} must be finite, got a tensor containing NaN or inf")
    if bool((prior < 0).any()):
        raise ValueError(f"{name} must be non-negative, got a minimum of {float(prior.min()):.4g}")
    sums = prior.sum(dim=1, dtype=torch.float64)
    worst = int((sums - 1).abs().argmax())
    if abs(float(sums[worst]) - 1.0) > 1e-4:
        raise ValueError(
            f"{name} must have rows that sum to 1, got a row (index {worst}) summing to "
            f"{float(sums[worst]):.6g}"
        )
    return prior


def check_confidence(confidence: str) -> Confidence:
    if confidence not in _CONFIDENCES:
        raise ValueError(f"confidence must be one of 'model' or 'prior', got {confidence!r}")
    return confidence  # type: ignore[return-value]
