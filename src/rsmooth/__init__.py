"""rsmooth: randomized smoothing for PyTorch.

Certify any classifier's L2 robustness with :class:`SmoothedClassifier`, train base
classifiers with the criteria in :mod:`rsmooth.losses`, attack smoothed classifiers with
:mod:`rsmooth.attacks`, and report with :mod:`rsmooth.metrics`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rsmooth.attacks import (
        AdaptiveNoiseAttack,
        CATRSNoiseAttack,
        SmoothDDNAttack,
        SmoothPGDAttack,
        UnrestrictedSmoothAttack,
    )
    from rsmooth.certificates import ABSTAIN, Certificate, RadiusCertificate
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
    from rsmooth.procedures import SampleSizeWarning
    from rsmooth.smoothing import SmoothedClassifier

__version__ = "0.3.0.dev0"

#: Where each top-level name lives: imported on first use, so that ``import rsmooth`` (and the
#: command line's ``--help``) stays light until a name is needed.
_HOMES = {
    "ABSTAIN": "rsmooth.certificates",
    "AdaptiveNoiseAttack": "rsmooth.attacks",
    "AdaptiveNoiseLoss": "rsmooth.losses",
    "CATRSLoss": "rsmooth.losses",
    "CATRSNoiseAttack": "rsmooth.attacks",
    "Certificate": "rsmooth.certificates",
    "ConsistencyLoss": "rsmooth.losses",
    "GaussianAugmentationLoss": "rsmooth.losses",
    "MACERLoss": "rsmooth.losses",
    "RadiusCertificate": "rsmooth.certificates",
    "SampleSizeWarning": "rsmooth.procedures",
    "SmoothAdvLoss": "rsmooth.losses",
    "SmoothDDNAttack": "rsmooth.attacks",
    "SmoothMixLoss": "rsmooth.losses",
    "SmoothPGDAttack": "rsmooth.attacks",
    "SmoothedClassifier": "rsmooth.smoothing",
    "StabilityLoss": "rsmooth.losses",
    "UnrestrictedSmoothAttack": "rsmooth.attacks",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rsmooth' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
