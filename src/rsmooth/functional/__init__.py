r"""Deterministic building blocks shared by the certifier, the training criteria and the attacks.

Every function here takes its noise **as an argument**, so results can be checked exactly and
differentiated with :func:`torch.autograd.gradcheck`; the modules draw the noise with
:func:`sample_noise` and delegate.

Replication order (used everywhere in rsmooth) is **noise-major**: for a batch ``x`` of ``B``
inputs and ``m`` noise copies, row ``i * B + j`` of a replicated tensor is copy ``i`` of input
``j``. :func:`replicate` builds it, :func:`sample_noise` draws noise of that shape and
:func:`split_copies` reshapes per-row outputs to ``[m, B, ...]``.

The functions live in private modules by family (the basics, the criteria without an adversary,
the attacks and adversarial criteria, the criteria that attack the noise); import them from here.
"""

from __future__ import annotations

from rsmooth.functional._attacks import (
    smooth_ddn_attack,
    smooth_pgd_attack,
    smoothadv_loss,
    smoothmix_terms,
    unrestricted_smooth_attack,
)
from rsmooth.functional._core import (
    replicate,
    sample_noise,
    soft_smoothed_probs,
    split_copies,
)
from rsmooth.functional._criteria import (
    ConsistencyTerms,
    GaussianAugmentationTerms,
    MACERTerms,
    StabilityTerms,
    consistency_loss,
    gaussian_augmentation_loss,
    macer_loss,
    stability_loss,
)
from rsmooth.functional._noise_attacks import (
    AdaptiveNoiseAttackResult,
    CATRSTerms,
    adaptive_noise_attack,
    catrs_loss,
    catrs_noise_attack,
)

__all__ = [
    "AdaptiveNoiseAttackResult",
    "CATRSTerms",
    "ConsistencyTerms",
    "GaussianAugmentationTerms",
    "MACERTerms",
    "StabilityTerms",
    "adaptive_noise_attack",
    "catrs_loss",
    "catrs_noise_attack",
    "consistency_loss",
    "gaussian_augmentation_loss",
    "macer_loss",
    "replicate",
    "sample_noise",
    "smooth_ddn_attack",
    "smooth_pgd_attack",
    "smoothadv_loss",
    "smoothmix_terms",
    "soft_smoothed_probs",
    "split_copies",
    "stability_loss",
    "unrestricted_smooth_attack",
]
