"""Mistakes every criterion catches through SmoothingCriterion: input range, labels, outputs,
eval mode, softmax models, attribute typos, and the official schedules of ``set_epoch``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rsmooth.losses import (
    AdaptiveNoiseLoss,
    ConsistencyLoss,
    GaussianAugmentationLoss,
    MACERLoss,
    SmoothAdvLoss,
    SmoothingCriterion,
    SmoothMixLoss,
    StabilityLoss,
)

FACTORIES: dict[str, Callable[..., SmoothingCriterion]] = {
    "gaussian": lambda **kw: GaussianAugmentationLoss(0.25, 2, **kw),
    "stability": lambda **kw: StabilityLoss(0.25, **kw),
    "consistency": lambda **kw: ConsistencyLoss(0.25, 2, **kw),
    "macer": lambda **kw: MACERLoss(0.25, 4, **kw),
    "smoothadv": lambda **kw: SmoothAdvLoss(0.25, 0.5, 1, 2, **kw),
    "smoothmix": lambda **kw: SmoothMixLoss(0.25, 0.5, 1, 2, 1.0, **kw),
    "adaptive": lambda **kw: AdaptiveNoiseLoss(0.25, 0.5, 1, 2, **kw),
}
NAMES = list(FACTORIES)
# criteria that attack in pixel space cannot turn the [0, 1] check off
RANGE_OPTIONAL = ["gaussian", "stability", "consistency", "macer"]


def _make(name: str, **kw: object) -> SmoothingCriterion:
    return FACTORIES[name](generator=torch.Generator().manual_seed(0), **kw)


def _model() -> nn.Module:
    torch.manual_seed(0)  # only the test's own weights; the library never seeds
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


X = torch.rand(5, 6, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 0, 1])


# ---------------------------------------------------------------------------- item 4: input range
@pytest.mark.parametrize("name", NAMES)
def test_8bit_pixels_rejected_with_hint(name: str) -> None:
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\].*8-bit pixels"):
        _make(name)(_model(), X * 255, Y)


@pytest.mark.parametrize("name", NAMES)
def test_normalised_inputs_rejected_with_hint(name: str) -> None:
    with pytest.raises(ValueError, match=r"normalisation \(mean/std\) applied outside the model"):
        _make(name)(_model(), (X - 0.5) / 0.25, Y)


@pytest.mark.parametrize("name", RANGE_OPTIONAL)
def test_input_range_none_turns_the_check_off(name: str) -> None:
    with pytest.raises(ValueError, match="input_range=None"):
        _make(name)(_model(), X * 255, Y)
    loss = _make(name, input_range=None)(_model(), X * 255, Y)
    assert torch.isfinite(loss)
    criterion = _make(name, input_range=(-3.0, 3.0))
    assert torch.isfinite(criterion(_model(), (X - 0.5) / 0.25, Y))


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ((1.0, 0.0), ValueError, "low < high"),
        ((0.0,), TypeError, "pair"),
        ("0,1", TypeError, "pair"),
        ((0.0, float("nan")), ValueError, "finite"),
    ],
)
def test_input_range_argument_validated(value: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        GaussianAugmentationLoss(0.25, input_range=value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- item 5: softmax
@pytest.mark.parametrize("name", NAMES)
def test_softmax_model_warns_once(name: str) -> None:
    model = nn.Sequential(_model(), nn.Softmax(dim=1))
    criterion = _make(name)
    with pytest.warns(UserWarning, match="probabilities.*expect logits"):
        criterion(model, X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        criterion(model, X, Y)  # once per criterion


@pytest.mark.parametrize("name", NAMES)
def test_logits_model_does_not_warn(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _make(name)(_model(), X, Y)


# ---------------------------------------------------------------------------- item 6: eval mode
@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_warns_once(name: str) -> None:
    model = _model().eval()
    criterion = _make(name)
    with pytest.warns(UserWarning, match=r"eval\(\) mode.*model\.train\(\)") as record:
        criterion(model, X, Y)
    assert record[0].filename == __file__  # attributed to the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        criterion(model, X, Y)
        with torch.no_grad():  # a validation pass does not warn either
            _make(name)(model, X, Y)
    assert not model.training


# ---------------------------------------------------------------------------- item 7: labels
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_every_integer_label_dtype_is_accepted(name: str, dtype: torch.dtype) -> None:
    model = _model()
    reference = _make(name)(model, X, Y)
    assert torch.equal(_make(name)(model, X, Y.to(dtype)), reference)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_labels_rejected(name: str, dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        _make(name)(_model(), X, Y.to(dtype))


# ---------------------------------------------------------------------------- item 8: outputs
class _Wrapped(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.inner = _model()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> object:
        logits = self.inner(x)
        if self.kind == "tuple":
            return logits, x
        if self.kind == "dict":
            return {"logits": logits}
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("tuple", r"got tuple; e\.g\. wrap the model to return output\[0\]"),
        ("dict", r"got dict; e\.g\. wrap the model to return output\['logits'\]"),
        ("hf", r"got SimpleNamespace; e\.g\. wrap the model to return output\.logits"),
    ],
)
def test_non_tensor_outputs_get_a_hint(name: str, kind: str, match: str) -> None:
    model = _Wrapped(kind)
    with pytest.raises(TypeError, match=match):
        _make(name)(model, X, Y)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not model._forward_hooks  # the checking hook was removed


@pytest.mark.parametrize("name", NAMES)
def test_unbatched_image_gets_the_unsqueeze_hint(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    image = torch.rand(3, 8, 8)  # one CHW image, as Cohen's API takes it
    with pytest.raises(ValueError, match=r"inputs\.unsqueeze\(0\)"):
        _make(name)(model, image, torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------- item 12: typos
@pytest.mark.parametrize("name", NAMES)
def test_misspelt_attribute_raises(name: str) -> None:
    criterion = _make(name)
    with pytest.raises(AttributeError, match="has no attribute 'sigmaa'; did you mean 'sigma'"):
        criterion.sigmaa = 0.5
    criterion.sigma = 0.5  # existing attributes stay settable
    criterion._private_cache = 1  # and private ones are free
    criterion.train(False)
    assert criterion.sigma == 0.5


def test_smoothmix_warmup_typo_is_caught() -> None:
    criterion = _make("smoothmix")
    with pytest.raises(AttributeError, match="did you mean 'warmup'"):
        criterion.wramup = 0.1
    assert criterion.warmup == 1.0


def test_subclass_may_add_attributes_in_init() -> None:
    class Custom(GaussianAugmentationLoss):
        def __init__(self) -> None:
            super().__init__(0.25)
            self.extra = 1

    criterion = Custom()
    criterion.extra = 2
    with pytest.raises(AttributeError, match="did you mean 'extra'"):
        criterion.extr = 3


def test_sealed_criterion_survives_deepcopy_and_pickle() -> None:
    import copy
    import pickle

    criterion = _make("smoothmix")
    for clone in (copy.deepcopy(criterion), pickle.loads(pickle.dumps(criterion))):
        assert clone.warmup == 1.0
        with pytest.raises(AttributeError):
            clone.wramup = 0.1


# ---------------------------------------------------------------------------- item 12: set_epoch
def test_smoothmix_set_epoch_follows_the_official_warmup() -> None:
    # official: warmup_v = min(1, (epoch + 1) / 10), multiplying eta and the one-step cap
    criterion = _make("smoothmix")
    expected = {0: 0.1, 1: 0.2, 4: 0.5, 8: 0.9, 9: 1.0, 30: 1.0}
    for epoch, value in expected.items():
        criterion.set_epoch(epoch)
        assert criterion.warmup == pytest.approx(value)
        assert criterion.epoch == epoch
    criterion = _make("smoothmix", warmup_epochs=4)
    criterion.set_epoch(1)
    assert criterion.warmup == pytest.approx(0.5)
    criterion = _make("smoothmix", warmup_epochs=0)
    criterion.set_epoch(0)
    assert criterion.warmup == 1.0


def test_smoothmix_set_epoch_changes_the_loss_weight() -> None:
    model = _model()
    full = _make("smoothmix")
    full_loss = full(model, X, Y)
    warm = _make("smoothmix")
    warm.set_epoch(0)
    warm_loss = warm(model, X, Y)
    terms = warm.last_terms
    assert terms["mix"] > 0  # otherwise the weight would not show
    assert warm_loss.item() == pytest.approx(terms["natural"] + 0.1 * terms["mix"], rel=1e-5)
    assert full.last_terms == pytest.approx(terms)
    assert full_loss.item() == pytest.approx(terms["natural"] + terms["mix"], rel=1e-5)


def test_smoothadv_set_epoch_follows_the_official_warmup() -> None:
    # official: epsilon_e = min(eps, (epoch + 1) * eps / 10), per epoch
    criterion = _make("smoothadv")  # eps = 0.5
    for epoch, value in {0: 0.05, 1: 0.1, 4: 0.25, 9: 0.5, 20: 0.5}.items():
        criterion.set_epoch(epoch)
        assert criterion.epsilon == pytest.approx(value)
    criterion = _make("smoothadv", warmup_epochs=0)
    criterion.set_epoch(0)
    assert criterion.epsilon == 0.5


def test_macer_set_epoch_defers_lambda() -> None:
    # Jeong's train_macer.py: lbd = 0 if deferred and epoch <= lr_step_size
    criterion = MACERLoss(0.25, 4, lbd=6.0, deferred_until=2)
    assert [_lbd_at(criterion, e) for e in range(5)] == [0.0, 0.0, 0.0, 6.0, 6.0]
    not_deferred = MACERLoss(0.25, 4, lbd=6.0)
    assert [_lbd_at(not_deferred, e) for e in range(3)] == [6.0, 6.0, 6.0]


def _lbd_at(criterion: MACERLoss, epoch: int) -> float:
    criterion.set_epoch(epoch)
    return criterion.lbd


@pytest.mark.parametrize("name", ["gaussian", "stability", "consistency"])
def test_set_epoch_without_a_schedule_changes_no_hyperparameter(name: str) -> None:
    criterion = _make(name)
    before = criterion.extra_repr()
    criterion.set_epoch(7)
    assert criterion.extra_repr() == before
    assert criterion.epoch == 7


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("epoch", "exc", "match"),
    [(-1, ValueError, "epoch must be"), (1.5, TypeError, "epoch must be an integer")],
)
def test_set_epoch_validates(name: str, epoch: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        _make(name).set_epoch(epoch)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: SmoothMixLoss(0.25, 0.5, 1, 2, 1.0, warmup_epochs=-1), "warmup_epochs"),
        (lambda: SmoothAdvLoss(0.25, 0.5, 1, 2, warmup_epochs=-1), "warmup_epochs"),
        (lambda: MACERLoss(0.25, deferred_until=-1), "deferred_until"),
    ],
)
def test_schedule_arguments_validated(factory: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()
