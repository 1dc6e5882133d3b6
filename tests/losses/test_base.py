"""Mistakes every criterion catches through SmoothingCriterion: input range, labels, outputs,
eval mode, softmax models, attribute typos, and the official schedules of ``set_epoch``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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
from tests.criteria_table import exported_criteria

FACTORIES: dict[str, Callable[..., SmoothingCriterion]] = {
    "gaussian": lambda **kw: GaussianAugmentationLoss(0.25, 2, **kw),
    "stability": lambda **kw: StabilityLoss(0.25, **kw),
    "consistency": lambda **kw: ConsistencyLoss(0.25, 2, **kw),
    "macer": lambda **kw: MACERLoss(0.25, 4, **kw),
    "smoothadv": lambda **kw: SmoothAdvLoss(0.25, 0.5, 1, 2, **{"warmup_epochs": 0, **kw}),
    "smoothmix": lambda **kw: SmoothMixLoss(0.25, 0.5, 1, 2, 1.0, **{"warmup_epochs": 0, **kw}),
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
        ("tuple", r"got a tuple; .*`return model\(x\)\[0\]`"),
        ("dict", r"got a dict; .*`return model\(x\)\[\"logits\"\]`"),
        ("hf", r"got a SimpleNamespace; .*`return model\(x\)\.logits`"),
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


class _Picky(nn.Module):
    """A model that raises its own error (no shape word in it) on anything but 2-D input."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise KeyError("unsupported input")
        return self.inner(x)


@pytest.mark.parametrize("name", NAMES)
def test_unbatched_hint_whatever_the_model_raises(name: str) -> None:
    # issue 20, item 9: the hint used to need a shape-like word in a RuntimeError
    with pytest.raises(ValueError, match=r"inputs\.unsqueeze\(0\).*the model raised KeyError"):
        _make(name)(_Picky(), torch.rand(3, 4, 6), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("name", NAMES)
def test_unbatched_image_with_one_label_gets_the_hint(name: str) -> None:
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\).*unsqueeze\(0\)"):
        _make(name)(_model(), torch.rand(3, 8, 8), torch.tensor([1]))


@pytest.mark.parametrize("name", NAMES)
def test_a_failing_batched_model_is_not_rewritten(name: str) -> None:
    with pytest.raises(KeyError, match="unsupported input"):
        _make(name)(_Picky(), torch.rand(2, 1, 1, 6), torch.tensor([0, 1]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("label", [3, 10])
def test_labels_out_of_range_name_the_number_of_logits(name: str, label: int) -> None:
    model = _model()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(
        ValueError,
        match=rf"targets must be class indices in \[0, 3\) for a model with 3 logits, got the label {label}",
    ):
        _make(name)(model, X, torch.tensor([0, 1, 2, 0, label]))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not model._forward_hooks


@pytest.mark.parametrize("name", NAMES)
def test_a_smoothed_classifier_is_refused_with_the_fix(name: str) -> None:
    from rsmooth import SmoothedClassifier

    smoothed = SmoothedClassifier(_model(), sigma=0.25)
    with pytest.raises(TypeError, match=r"pass smoothed\.model, and sigma=smoothed\.sigma"):
        _make(name)(smoothed, X, Y)  # type: ignore[arg-type]


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
    with pytest.raises(AttributeError, match="did you mean 'warmup_epochs'"):
        criterion.wramup_epochs = 3
    assert criterion.warmup_epochs == 0


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

    criterion = _make("smoothmix", warmup_epochs=5)
    criterion.eta = 2.0
    criterion.set_epoch(1)
    for clone in (copy.deepcopy(criterion), pickle.loads(pickle.dumps(criterion))):
        assert (clone.eta, clone.warmup_epochs, clone.epoch) == (2.0, 5, 1)
        assert dict(clone.scheduled) == dict(criterion.scheduled)
        assert repr(clone) == repr(criterion)
        assert clone.generator is None  # generators do not pickle
        with pytest.raises(AttributeError):
            clone.wramup = 0.1
        with pytest.raises(ValueError, match="eta must be non-negative"):  # still checked
            clone.eta = -1.0
        assert clone.eta == 2.0
    assert criterion.state_dict() == {}  # settings are not tensors


# ---------------------------------------------------------------------------- item 12: set_epoch
def test_smoothmix_set_epoch_follows_the_official_warmup() -> None:
    # official: warmup_v = min(1, (epoch + 1) / 10), multiplying eta and the one-step cap
    criterion = _make("smoothmix", warmup_epochs=10)
    expected = {0: 0.1, 1: 0.2, 4: 0.5, 8: 0.9, 9: 1.0, 30: 1.0}
    for epoch, value in expected.items():
        criterion.set_epoch(epoch)
        assert criterion.scheduled["warmup"] == pytest.approx(value)
        assert criterion.scheduled["eta"] == pytest.approx(value * criterion.eta)
        assert criterion.epoch == epoch
    criterion = _make("smoothmix", warmup_epochs=4)
    criterion.set_epoch(1)
    assert criterion.scheduled["warmup"] == pytest.approx(0.5)
    criterion = _make("smoothmix", warmup_epochs=0)
    criterion.set_epoch(0)
    assert criterion.scheduled["warmup"] == 1.0


def test_smoothmix_set_epoch_changes_the_loss_weight() -> None:
    model = _model()
    full = _make("smoothmix", warmup_epochs=10)
    full.set_epoch(9)
    full_loss = full(model, X, Y)
    warm = _make("smoothmix", warmup_epochs=10)
    warm.set_epoch(0)
    warm_loss = warm(model, X, Y)
    terms = warm.last_terms
    assert terms["mix"] > 0  # otherwise the weight would not show
    assert warm_loss.item() == pytest.approx(terms["natural"] + 0.1 * terms["mix"], rel=1e-5)
    assert full.last_terms == pytest.approx(terms)
    assert full_loss.item() == pytest.approx(terms["natural"] + terms["mix"], rel=1e-5)


def test_smoothadv_set_epoch_follows_the_official_warmup() -> None:
    # official: epsilon_e = min(eps, (epoch + 1) * eps / 10), per epoch
    criterion = _make("smoothadv", warmup_epochs=10)  # eps = 0.5
    for epoch, value in {0: 0.05, 1: 0.1, 4: 0.25, 9: 0.5, 20: 0.5}.items():
        criterion.set_epoch(epoch)
        assert criterion.scheduled["epsilon"] == pytest.approx(value)
        assert criterion.epsilon == 0.5
    criterion = _make("smoothadv", warmup_epochs=0)
    criterion.set_epoch(0)
    assert criterion.scheduled["epsilon"] == 0.5


def test_smoothadv_attack_uses_the_scheduled_epsilon() -> None:
    model = _model()
    warm = _make("smoothadv", warmup_epochs=10)
    warm.set_epoch(1)  # epsilon_1 = 0.1
    reference = _make("smoothadv", warmup_epochs=0)
    reference.epsilon = 0.1
    assert torch.equal(warm(model, X, Y), reference(model, X, Y))


def test_macer_set_epoch_defers_lambda() -> None:
    # Jeong's train_macer.py: lbd = 0 if deferred and epoch <= lr_step_size
    criterion = MACERLoss(0.25, 4, lbd=6.0, deferred_until=2)
    assert [_lbd_at(criterion, e) for e in range(5)] == [0.0, 0.0, 0.0, 6.0, 6.0]
    assert criterion.lbd == 6.0
    not_deferred = MACERLoss(0.25, 4, lbd=6.0)
    assert [_lbd_at(not_deferred, e) for e in range(3)] == [6.0, 6.0, 6.0]


def _lbd_at(criterion: MACERLoss, epoch: int) -> float:
    criterion.set_epoch(epoch)
    return criterion.scheduled["lbd"]


def test_macer_deferred_lambda_weights_the_loss() -> None:
    model = _model()
    criterion = MACERLoss(0.25, 4, lbd=6.0, deferred_until=2, generator=torch.Generator())
    criterion.set_epoch(0)
    criterion.generator.manual_seed(0)
    loss = criterion(model, X, Y)
    assert loss.item() == pytest.approx(criterion.last_terms["classification"], rel=1e-6)


@pytest.mark.parametrize("name", ["gaussian", "stability", "consistency"])
def test_set_epoch_without_a_schedule_changes_no_hyperparameter(name: str) -> None:
    criterion = _make(name)
    before = criterion.extra_repr()
    criterion.set_epoch(7)
    assert criterion.extra_repr() == before
    assert criterion.epoch == 7
    assert dict(criterion.scheduled) == {}


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


# ------------------------------------------- issue 20, item 2: set_epoch keeps assigned values
# (name, constructor keywords, attribute, value assigned, epoch, value in force in that epoch)
ASSIGNED_TARGETS = [
    ("smoothadv", {"warmup_epochs": 2}, "epsilon", 1.0, 20, {"epsilon": 1.0}),
    ("smoothadv", {"warmup_epochs": 4}, "epsilon", 1.0, 0, {"epsilon": 0.25}),
    ("smoothmix", {"warmup_epochs": 4}, "eta", 2.0, 1, {"warmup": 0.5, "eta": 1.0}),
    ("macer", {"deferred_until": 3}, "lbd", 2.0, 20, {"lbd": 2.0}),
    ("macer", {"deferred_until": 3}, "lbd", 2.0, 1, {"lbd": 0.0}),
    ("adaptive", {"adversarial_from": 3}, "adversarial", False, 20, {"adversarial": False}),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "attribute", "value", "epoch", "expected"), ASSIGNED_TARGETS
)
def test_set_epoch_never_overwrites_an_assigned_value(
    name: str, kwargs: dict, attribute: str, value: object, epoch: int, expected: dict
) -> None:
    # issue 20: SmoothAdvLoss(0.5, 1.0, 2, 2); c.epsilon = 0.5; c.set_epoch(20) gave 1.0
    criterion = _make(name, **kwargs)
    criterion.set_epoch(0)
    setattr(criterion, attribute, value)
    criterion.set_epoch(epoch)
    assert getattr(criterion, attribute) == value
    assert dict(criterion.scheduled) == pytest.approx(expected)


def test_the_issue_example_keeps_the_assigned_epsilon() -> None:
    criterion = SmoothAdvLoss(0.5, 1.0, 2, 2)
    criterion.epsilon = 0.5
    criterion.set_epoch(20)
    assert criterion.epsilon == 0.5
    assert criterion.scheduled["epsilon"] == 0.5


def test_scheduled_is_read_only() -> None:
    criterion = _make("smoothadv", warmup_epochs=10)
    with pytest.raises(AttributeError):
        criterion.scheduled = {"epsilon": 1.0}  # type: ignore[misc]
    with pytest.raises(TypeError):
        criterion.scheduled["epsilon"] = 1.0  # type: ignore[index]


# ------------------------------------------- issue 20, item 3: a configured schedule never stepped
UNSTEPPED = [
    ("smoothadv", {"warmup_epochs": 10}, "warmup_epochs=10"),
    ("smoothmix", {"warmup_epochs": 10}, "warmup_epochs=10"),
    ("macer", {"deferred_until": 30}, "deferred_until=30"),
    ("adaptive", {"adversarial_from": 60}, "adversarial_from=60"),
]


@pytest.mark.parametrize(("name", "kwargs", "configured"), UNSTEPPED)
def test_a_schedule_never_stepped_warns_once(name: str, kwargs: dict, configured: str) -> None:
    criterion = _make(name, **kwargs)
    with pytest.warns(UserWarning, match=rf"{configured}.*set_epoch was never called") as record:
        criterion(_model(), X, Y)
    assert record[0].filename == __file__  # attributed to the caller
    assert "set_epoch(epoch)" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        criterion(_model(), X, Y)  # once per criterion


@pytest.mark.parametrize(("name", "kwargs", "configured"), UNSTEPPED)
def test_a_stepped_schedule_does_not_warn(name: str, kwargs: dict, configured: str) -> None:
    criterion = _make(name, **kwargs)
    criterion.set_epoch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        criterion(_model(), X, Y)


def test_the_default_warmups_count_as_configured_schedules() -> None:
    # SmoothAdv and SmoothMix warm up over 10 epochs by default: never stepped, they skip it
    for criterion in (SmoothAdvLoss(0.25, 0.5, 1, 2), SmoothMixLoss(0.25, 0.5, 1, 2, 1.0)):
        with pytest.warns(UserWarning, match="warmup_epochs=10.*warmup_epochs=0"):
            criterion(_model(), X, Y)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("smoothadv", {"warmup_epochs": 0}),
        ("smoothadv", {"warmup_epochs": 1}),  # the official "no warm-up"
        ("smoothmix", {"warmup_epochs": 1}),
        ("macer", {}),
        ("adaptive", {}),
        ("adaptive", {"adversarial_from": 0}),
        ("gaussian", {}),
    ],
)
def test_no_schedule_configured_no_warning(name: str, kwargs: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _make(name, **kwargs)(_model(), X, Y)


# ------------------------------------------- issue 20, item 7: hyperparameters checked on assignment
# (name, attribute, value, exception, message); the constructor's checks, on assignment
ASSIGNMENTS = [
    ("gaussian", "sigma", -0.5, ValueError, "sigma must be positive and finite, got -0.5"),
    ("gaussian", "num_noise", 0, ValueError, "num_noise must be a positive integer, got 0"),
    ("gaussian", "generator", 1, TypeError, "generator must be a torch.Generator, got int"),
    ("gaussian", "input_range", (1.0, 0.0), ValueError, "low < high"),
    ("stability", "lbd", -1.0, ValueError, "lbd must be non-negative"),
    ("stability", "detach_target", 1, TypeError, "detach_target must be a bool, got int"),
    ("consistency", "num_noise", 1, ValueError, "num_noise must be an integer >= 2, got 1"),
    ("consistency", "eta", float("nan"), ValueError, "eta must be non-negative"),
    ("macer", "gamma", 0.0, ValueError, "gamma must be positive"),
    ("macer", "deferred_until", -1, ValueError, "deferred_until must be an integer >= 0"),
    ("smoothadv", "num_steps", 2.5, TypeError, "num_steps must be an integer, got float"),
    ("smoothadv", "epsilon", -0.5, ValueError, "epsilon must be non-negative"),
    ("smoothadv", "attack", "fgsm", ValueError, "attack must be 'pgd' or 'ddn', got 'fgsm'"),
    ("smoothadv", "input_range", None, ValueError, r"input_range must be \(0.0, 1.0\)"),
    ("smoothadv", "warmup_epochs", -1, ValueError, "warmup_epochs must be an integer >= 0"),
    ("smoothmix", "step_size", -1.0, ValueError, "step_size must be positive and finite, got -1.0"),
    ("smoothmix", "num_noise", 0, ValueError, "num_noise must be a positive integer, got 0"),
    ("smoothmix", "one_step_max_norm", -1.0, ValueError, "one_step_max_norm must be non-negative"),
    ("smoothmix", "max_norm", 0.0, ValueError, "max_norm must be positive"),
    ("adaptive", "num_steps", -1, ValueError, "num_steps must be an integer >= 0, got -1"),
    ("adaptive", "adversarial", "yes", TypeError, "adversarial must be a bool, got str"),
    ("adaptive", "adversarial_from", 1.5, TypeError, "adversarial_from must be an integer"),
]


@pytest.mark.parametrize(("name", "attribute", "value", "exc", "match"), ASSIGNMENTS)
def test_assignment_is_checked_and_keeps_the_old_value(
    name: str, attribute: str, value: object, exc: type, match: str
) -> None:
    criterion = _make(name)
    before = getattr(criterion, attribute)
    with pytest.raises(exc, match=match):
        setattr(criterion, attribute, value)
    assert getattr(criterion, attribute) == before
    assert torch.isfinite(criterion(_model(), X, Y))  # still usable


@pytest.mark.parametrize("name", NAMES)
def test_assignment_converts_like_the_constructor(name: str) -> None:
    criterion = _make(name)
    criterion.sigma = 1  # an int is a real number, stored as a float
    assert criterion.sigma == 1.0 and isinstance(criterion.sigma, float)


@settings(max_examples=30, deadline=None, database=None)
@given(
    name=st.sampled_from(NAMES),
    value=st.floats(max_value=0.0) | st.just(math.nan) | st.just(math.inf),
)
def test_any_non_positive_sigma_assignment_is_refused(name: str, value: float) -> None:
    criterion = _make(name)
    with pytest.raises(ValueError, match="sigma must be positive"):
        criterion.sigma = value
    assert criterion.sigma == 0.25


@settings(max_examples=30, deadline=None, database=None)
@given(
    name=st.sampled_from(["stability", "consistency", "macer"]),
    value=st.floats(max_value=-1e-300) | st.just(-math.inf),
)
def test_any_negative_weight_assignment_is_refused(name: str, value: float) -> None:
    criterion = _make(name)
    before = criterion.lbd
    with pytest.raises(ValueError, match="lbd must be non-negative"):
        criterion.lbd = value
    assert criterion.lbd == before


# ------------------------------------------- issue 20: one positional order for every criterion
ADVERSARY = ("epsilon", "step_size")


@pytest.mark.parametrize("cls", sorted(exported_criteria(), key=lambda c: c.__name__))
def test_one_positional_order_for_every_criterion(cls: type) -> None:
    """sigma, then the adversary's size and steps (if any), then num_noise, then the weights."""
    import inspect

    positional = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and name != "self"
    ]
    assert positional[0] == "sigma"
    rest = positional[1:]
    if rest and rest[0] in ADVERSARY:
        assert rest[1] == "num_steps", cls
        rest = rest[2:]
    if "num_noise" in rest:
        assert rest[0] == "num_noise", cls
        rest = rest[1:]
    assert not set(rest) & {"num_noise", "num_steps", *ADVERSARY}, cls  # only weights remain
