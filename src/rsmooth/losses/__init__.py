"""Training criteria for smoothed classifiers, all called as ``criterion(model, inputs, targets)``."""

from __future__ import annotations

from rsmooth.losses._base import SmoothingCriterion
from rsmooth.losses.adaptive import AdaptiveNoiseLoss
from rsmooth.losses.catrs import CATRSLoss
from rsmooth.losses.consistency import ConsistencyLoss
from rsmooth.losses.gaussian import GaussianAugmentationLoss
from rsmooth.losses.macer import MACERLoss
from rsmooth.losses.smoothadv import SmoothAdvLoss
from rsmooth.losses.smoothmix import SmoothMixLoss
from rsmooth.losses.stability import StabilityLoss

__all__ = [
    "AdaptiveNoiseLoss",
    "CATRSLoss",
    "ConsistencyLoss",
    "GaussianAugmentationLoss",
    "MACERLoss",
    "SmoothAdvLoss",
    "SmoothMixLoss",
    "SmoothingCriterion",
    "StabilityLoss",
]
