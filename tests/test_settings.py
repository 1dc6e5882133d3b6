"""The one settings rule: checked on every assignment, and no new public attribute once built."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from rsmooth import SmoothedClassifier
from rsmooth._settings import Sealed, Setting
from rsmooth._validation import check_positive
from rsmooth.attacks import (
    AdaptiveNoiseAttack,
    CATRSNoiseAttack,
    SmoothDDNAttack,
    SmoothPGDAttack,
    UnrestrictedSmoothAttack,
)
from rsmooth.losses import GaussianAugmentationLoss

OBJECTS = {
    "smoothed": lambda: SmoothedClassifier(nn.Linear(4, 3), 0.5),
    "criterion": lambda: GaussianAugmentationLoss(0.5),
    "unrestricted": lambda: UnrestrictedSmoothAttack(0.25, 0.3, 3, 2),
    "pgd": lambda: SmoothPGDAttack(0.25, 0.5, 3, 2),
    "ddn": lambda: SmoothDDNAttack(0.25, 0.5, 3, 2),
    "catrs-noise": lambda: CATRSNoiseAttack(0.5, 1.0, 2, 2),
    "adaptive-noise": lambda: AdaptiveNoiseAttack(0.5, 0.25, 2, 2),
}


@pytest.mark.parametrize("name", list(OBJECTS))
def test_misspelt_setting_is_refused_with_the_nearest_name(name: str) -> None:
    obj = OBJECTS[name]()
    with pytest.raises(AttributeError, match=r"has no attribute 'sigmaa'; did you mean 'sigma'\?"):
        obj.sigmaa = 0.3
    assert not hasattr(obj, "sigmaa")
    assert obj.sigma != 0.3  # the misspelt assignment changed nothing


@pytest.mark.parametrize("name", list(OBJECTS))
def test_existing_and_private_attributes_stay_assignable(name: str) -> None:
    obj = OBJECTS[name]()
    obj.sigma = 0.3
    obj._scratch = 1
    assert obj.sigma == 0.3
    assert obj._scratch == 1


@pytest.mark.parametrize("name", list(OBJECTS))
def test_a_refused_value_raises_and_keeps_the_old_one(name: str) -> None:
    obj = OBJECTS[name]()
    before = obj.sigma
    with pytest.raises(ValueError, match="sigma must be positive"):
        obj.sigma = -1.0
    assert obj.sigma == before


@pytest.mark.parametrize("name", list(OBJECTS))
def test_copies_and_pickles_stay_sealed(name: str) -> None:
    obj = OBJECTS[name]()
    for clone in (copy.deepcopy(obj), pickle.loads(pickle.dumps(obj))):
        clone.sigma = 0.4
        with pytest.raises(AttributeError, match="did you mean 'sigma'"):
            clone.sigmaa = 0.3


class _Noise(Sealed):
    sigma = Setting(check_positive)

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma
        self.extra = "set while building"


class _MoreNoise(_Noise):
    def __init__(self, sigma: float, scale: float) -> None:
        super().__init__(sigma)  # the outer __init__ is not over yet: more attributes allowed
        self.scale = scale


def test_sealed_only_after_the_outermost_init() -> None:
    noise = _MoreNoise(0.5, 2.0)
    assert (noise.sigma, noise.extra, noise.scale) == (0.5, "set while building", 2.0)
    noise.scale = 3.0
    with pytest.raises(AttributeError, match="'scal'; did you mean 'scale'"):
        noise.scal = 1.0


def test_sealed_module_keeps_nn_module_assignment() -> None:
    """Sealed before nn.Module in the bases: submodules and parameters still register."""
    attack = SmoothPGDAttack(0.25, 0.5, 3, 2)
    assert list(attack.parameters()) == []
    attack.train(False)  # nn.Module's own attributes are assignable
    assert attack.training is False
    criterion = GaussianAugmentationLoss(0.5)
    assert criterion.to(torch.float64) is criterion
