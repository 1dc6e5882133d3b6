"""Training criteria for smoothed classifiers, all called as ``criterion(model, inputs, targets)``."""

from __future__ import annotations

from rsmooth.losses._base import SmoothingCriterion
from rsmooth.losses.smoothadv import SmoothAdvLoss
from rsmooth.losses.smoothmix import SmoothMixLoss

__all__ = ["SmoothAdvLoss", "SmoothMixLoss", "SmoothingCriterion"]
