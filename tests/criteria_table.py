"""One factory table for every criterion and attack, shared by the cross-cutting tests.

``test_ddp.py``, ``test_amp.py`` and ``test_channels_last.py`` run every entry below. Each entry
builds a criterion (or attack) with tiny hyperparameters from a ``torch.Generator`` and says how
to call it. ``missing_criteria()`` lists the criterion classes exported by ``rsmooth.losses``
that have no entry here, and the tests FAIL while that list is not empty: **a new criterion must
get an entry in CRITERIA** (several entries per class are fine, e.g. two attack variants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import rsmooth.attacks
import rsmooth.losses
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


def _plain_call(module: nn.Module, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    return module(model, inputs, targets)


def _prior(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    # A fixed prior (half on the label, half uniform); K from a gradient-free forward pass.
    with torch.no_grad():
        num_classes = model(inputs[:1]).shape[-1]
    prior = torch.full((len(targets), num_classes), 0.5 / num_classes, dtype=torch.float32)
    prior[torch.arange(len(targets)), targets] += 0.5
    return prior.to(inputs.dtype)


def _catrs_call(module: nn.Module, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    return module(model, inputs, targets, prior=_prior(model, inputs, targets))


def _catrs_attack_call(
    module: nn.Module, model: nn.Module, inputs: Tensor, targets: Tensor
) -> Tensor:
    return module(model, inputs, _prior(model, inputs, targets))


@dataclass(frozen=True)
class Entry:
    """How to build one criterion (or attack) and call it on ``(model, inputs, targets)``."""

    cls: type
    make: Callable[[torch.Generator], nn.Module]
    #: ``call(module, model, inputs, targets)``; override for criteria whose forward takes more
    #: (e.g. a ``prior=`` tensor built from ``inputs``/``targets``).
    call: Callable[[nn.Module, nn.Module, Tensor, Tensor], Tensor] = _plain_call
    #: Attacks only: True if it returns adversarial noise ``[m * B, *]`` (drawn first from the
    #: generator with ``sample_noise``) instead of adversarial inputs ``[B, *]``.
    noise: bool = False


# Every criterion exported by rsmooth.losses needs at least one entry here (see missing_criteria).
# Hyperparameters are tiny so that the whole table runs in well under a second per test.
CRITERIA: dict[str, Entry] = {
    "gaussian": Entry(
        GaussianAugmentationLoss, lambda g: GaussianAugmentationLoss(0.5, 2, generator=g)
    ),
    "stability": Entry(StabilityLoss, lambda g: StabilityLoss(0.5, 2.0, generator=g)),
    "smoothadv-pgd": Entry(
        SmoothAdvLoss, lambda g: SmoothAdvLoss(0.5, 0.5, 2, 2, generator=g, warmup_epochs=0)
    ),
    "smoothadv-ddn": Entry(
        SmoothAdvLoss,
        lambda g: SmoothAdvLoss(0.5, 0.5, 2, 2, attack="ddn", generator=g, warmup_epochs=0),
    ),
    "macer": Entry(MACERLoss, lambda g: MACERLoss(0.5, 4, generator=g)),
    "consistency": Entry(ConsistencyLoss, lambda g: ConsistencyLoss(0.5, 2, generator=g)),
    "smoothmix": Entry(
        SmoothMixLoss, lambda g: SmoothMixLoss(0.5, 1.0, 2, 2, 5.0, generator=g, warmup_epochs=0)
    ),
    "smoothmix-one-step": Entry(
        SmoothMixLoss,
        lambda g: SmoothMixLoss(
            0.5, 1.0, 2, 2, 5.0, one_step_adversary=True, generator=g, warmup_epochs=0
        ),
    ),
    "catrs": Entry(
        CATRSLoss,
        lambda g: CATRSLoss(0.5, num_noise=2, epsilon=1.0, num_steps=2, generator=g),
        call=_catrs_call,
    ),
    "adaptive-noise": Entry(
        AdaptiveNoiseLoss, lambda g: AdaptiveNoiseLoss(0.5, 0.25, 2, num_noise=2, generator=g)
    ),
}

ATTACKS: dict[str, Entry] = {
    "unrestricted": Entry(
        rsmooth.attacks.UnrestrictedSmoothAttack,
        lambda g: rsmooth.attacks.UnrestrictedSmoothAttack(0.5, 1.0, 3, 2, generator=g),
    ),
    "pgd": Entry(
        rsmooth.attacks.SmoothPGDAttack,
        lambda g: rsmooth.attacks.SmoothPGDAttack(0.5, 0.5, 3, 2, generator=g),
    ),
    "ddn": Entry(
        rsmooth.attacks.SmoothDDNAttack,
        lambda g: rsmooth.attacks.SmoothDDNAttack(0.5, 0.5, 3, 2, generator=g),
    ),
    "catrs-noise": Entry(
        rsmooth.attacks.CATRSNoiseAttack,
        lambda g: rsmooth.attacks.CATRSNoiseAttack(0.5, 1.0, 2, 2, generator=g),
        call=_catrs_attack_call,
        noise=True,
    ),
    "adaptive-noise": Entry(
        rsmooth.attacks.AdaptiveNoiseAttack,
        lambda g: rsmooth.attacks.AdaptiveNoiseAttack(0.5, 0.25, 2, 2, generator=g),
        noise=True,
    ),
}


def _exported_classes(module: object, base: type) -> set[type]:
    names = getattr(module, "__all__", ())
    found = {getattr(module, name) for name in names}
    return {obj for obj in found if isinstance(obj, type) and issubclass(obj, base)}


def exported_criteria() -> set[type]:
    """Every criterion class in ``rsmooth.losses.__all__`` (the abstract base excluded)."""
    return _exported_classes(rsmooth.losses, nn.Module) - {rsmooth.losses.SmoothingCriterion}


def missing_criteria() -> list[str]:
    """Names of the exported criteria without an entry in :data:`CRITERIA`."""
    covered = {entry.cls for entry in CRITERIA.values()}
    return sorted(cls.__name__ for cls in exported_criteria() - covered)


def missing_attacks() -> list[str]:
    """Names of the exported attacks without an entry in :data:`ATTACKS`."""
    covered = {entry.cls for entry in ATTACKS.values()}
    return sorted(cls.__name__ for cls in _exported_classes(rsmooth.attacks, nn.Module) - covered)
