"""rsmooth: randomized smoothing for PyTorch.

Certify any classifier's L2 robustness with :class:`SmoothedClassifier`, train base
classifiers with the criteria in :mod:`rsmooth.losses`, attack smoothed classifiers with
:mod:`rsmooth.attacks`, and report with :mod:`rsmooth.metrics`.
"""

from __future__ import annotations

from rsmooth.attacks import (
    AdaptiveNoiseAttack,
    CATRSNoiseAttack,
    SmoothDDNAttack,
    SmoothPGDAttack,
    UnrestrictedSmoothAttack,
)
from rsmooth.losses import (
    AdaptiveNoiseLoss,
    CATRSLoss,
    ConsistencyLoss,
    GaussianAugmentationLoss,
    MACERLoss,
    SmoothAdvLoss,
    SmoothMixLoss,
    StabilityLoss,
)
from rsmooth.sequential import RadiusCertificate
from rsmooth.smoothing import ABSTAIN, Certificate, SampleSizeWarning, SmoothedClassifier

__version__ = "0.1.0.dev0"

__all__ = [
    "ABSTAIN",
    "AdaptiveNoiseAttack",
    "AdaptiveNoiseLoss",
    "CATRSLoss",
    "CATRSNoiseAttack",
    "Certificate",
    "ConsistencyLoss",
    "GaussianAugmentationLoss",
    "MACERLoss",
    "RadiusCertificate",
    "SampleSizeWarning",
    "SmoothAdvLoss",
    "SmoothDDNAttack",
    "SmoothMixLoss",
    "SmoothPGDAttack",
    "SmoothedClassifier",
    "StabilityLoss",
    "UnrestrictedSmoothAttack",
    "__version__",
]
