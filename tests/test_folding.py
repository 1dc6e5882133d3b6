"""fold_batchnorm: the engine's folded copy of a model with BatchNorm layers.

The copy must be the same classifier up to rounding (checked against a closed form, with a broken
fold shown to fail the same check), must never touch the user's model, must follow every change
of the model, and must stay out of the way where it cannot be exact (hooks, shared layers).
"""

from __future__ import annotations

import argparse
import functools
import json
import math

import numpy as np
import pytest
import torch
from conftest import Spy, load_script, small_mlp
from scipy.stats import binom, norm
from torch import nn

import rsmooth._folding as folding
import rsmooth.smoothing as smoothing
from rsmooth import SmoothedClassifier
from rsmooth._folding import (
    FoldedCopy,
    Unfoldable,
    add_into,
    count_batchnorms,
    fold_batchnorm,
)


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def fixed_rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, from a fixed generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=g) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=g) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(size, generator=g) + 0.5)
                    module.bias.copy_(torch.rand(size, generator=g) - 0.5)
    return model


class Net(nn.Module):
    """conv-BN-ReLU, a residual block (conv-BN, 1x1 conv-BN shortcut), linear-BN1d head.

    Three BatchNorm layers follow convolutions and fold; the fourth follows a linear layer.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)  # test-only: fixed weights
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.bn_fc = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 5)
        # attributes the forward reads, which a trace bakes in or copies
        self.scale = 1.0
        self.offset = torch.zeros(5)
        self.post = torch.clone
        self.norm_layer = functools.partial(nn.BatchNorm2d, eps=1e-5)  # as torchvision and timm
        randomize_batchnorms(self, seed)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(self.bn(self.conv(h)) + self.shortcut(h))
        out = self.scale * self.head(torch.relu(self.bn_fc(self.fc(h.flatten(1)))))
        return self.post(out + self.offset)


class Guarded(nn.Module):
    """Checks its input's channels in Python, which torch.fx cannot trace; wraps a Net."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError("three channels expected")
        return self.net(x)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(training)
    return out


# ---------------------------------------------------------------- the same classifier
def test_the_folded_copy_has_the_models_logits_and_the_model_is_left_alone():
    model = Net().train()
    model.head.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    smoothed = SmoothedClassifier(model, 0.5, batch_size=64)
    x = fixed_rand(3, 3, 8, 8)
    counts = smoothed.sample_counts(x, num=300, generator=gens([1, 2, 3]))

    runner = smoothed._inference_model(x)
    assert runner is not model and count_batchnorms(runner) == 1  # bn_fc
    assert "fold_batchnorm='auto' (3 BatchNorm layers folded)" in repr(smoothed)
    probe = fixed_rand(64, 3, 8, 8, seed=1)
    torch.testing.assert_close(logits(runner, probe), logits(model, probe), rtol=1e-5, atol=1e-5)
    # the model: the same modules, values, modes, requires_grad and .grad
    assert count_batchnorms(model) == 4 and isinstance(model.bn, nn.BatchNorm2d)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    assert not model.head.weight.requires_grad and model.fc.weight.requires_grad
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    # the votes: those of the model, but for a sample on a decision boundary (rounding)
    plain = SmoothedClassifier(model, 0.5, batch_size=64, fold_batchnorm=False)
    want = plain.sample_counts(x, num=300, generator=gens([1, 2, 3]))
    assert int((counts - want).abs().sum()) <= 4
    assert "fold_batchnorm=False" in repr(plain) and "folded" not in repr(plain)


def test_the_same_generator_gives_the_same_counts_however_the_samples_are_split():
    smoothed = SmoothedClassifier(Net(), 0.5, batch_size=64)
    x = fixed_rand(2, 3, 8, 8)
    whole = smoothed.sample_counts(x, num=500, generator=gens([4, 5]))
    again = SmoothedClassifier(Net(), 0.5, batch_size=7).sample_counts(
        x, num=500, generator=gens([4, 5])
    )
    assert torch.equal(whole, again)
    seeds = smoothed._input_seeds(x, gens([4, 5]))
    pieces = sum(
        smoothed._counts(x, seeds, stream=smoothing.ESTIMATION, start=a, stop=b)
        for a, b in ((0, 13), (13, 250), (250, 500))
    )
    assert torch.equal(pieces, whole)


class ConvBN(nn.Module):
    """A 1x1 convolution (3 -> 2 channels) on 3x1x1 inputs, BatchNorm, flatten: in closed form.

    Still a linear two-class classifier: class 0 exactly when a.x + d > 0 (:meth:`decision`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.tensor([[3.0, -4.0, 0.0], [0.0, 1.0, 1.0]])[..., None, None]
            )
            self.conv.bias.copy_(torch.tensor([0.5, 0.0]))
            self.bn.running_mean.copy_(torch.tensor([2.0, -1.0]))
            self.bn.running_var.copy_(torch.tensor([4.0, 0.25]))
            self.bn.weight.copy_(torch.tensor([1.5, 0.5]))
            self.bn.bias.copy_(torch.tensor([0.25, -0.5]))
        self.eval()

    def forward(self, x):
        return self.bn(self.conv(x)).flatten(1)

    def decision(self) -> tuple[np.ndarray, float]:
        w = self.conv.weight.detach().double().flatten(1).numpy()
        c = self.conv.bias.detach().double().numpy()
        bn = self.bn
        s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        m = bn.running_mean.detach().double().numpy()
        b = bn.bias.detach().double().numpy()
        a = s[0] * w[0] - s[1] * w[1]
        d = s[0] * (c[0] - m[0]) + b[0] - s[1] * (c[1] - m[1]) - b[1]
        return a, float(d)


def closed_form_check(smoothed: SmoothedClassifier, model: ConvBN) -> None:
    """Certify 3000 trials of a point at distance 0.3; soundness and the vote rate, exactly."""
    sigma, margin, trials, n, alpha = smoothed.sigma, 0.3, 3000, 200, 0.05
    a, d = model.decision()
    x = torch.zeros(3, 1, 1, dtype=torch.float64)
    x[0] = (margin * np.linalg.norm(a) - d) / a[0]  # a.x + d = margin * ||a||
    p_a = float(norm.cdf(margin / sigma))
    cert = smoothed.certify(
        x.float().expand(trials, -1, -1, -1).clone(),
        n=n,
        n0=10,
        alpha=alpha,
        generator=torch.Generator().manual_seed(7),
    )
    wrong = (cert.prediction == 1) | ((cert.prediction == 0) & (cert.radius > margin))
    assert int(wrong.sum()) <= binom.ppf(1 - 1e-6, trials, alpha)
    votes = smoothed.sample_counts(
        x.float().expand(trials, -1, -1, -1).clone(),
        num=n,
        generator=torch.Generator().manual_seed(8),
    )[:, 0]
    rate = float(votes.double().mean()) / n
    assert rate == pytest.approx(p_a, abs=5 * math.sqrt(p_a * (1 - p_a) / (trials * n)))


def test_a_folded_conv_batchnorm_classifier_matches_its_closed_form():
    model = ConvBN()
    smoothed = SmoothedClassifier(model, 0.5, input_range=None)
    closed_form_check(smoothed, model)
    assert smoothed._folded.folded_layers() == 1


def dropping_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A broken fold: the BatchNorm layers removed, not folded."""
    broken = ConvBN()
    broken.load_state_dict(model.state_dict())
    broken.bn = nn.Identity()
    return broken, 1


def test_a_broken_fold_fails_the_closed_form_and_the_check_catches_it(monkeypatch):
    monkeypatch.setattr(smoothing, "fold_batchnorm", dropping_batchnorm)
    model = ConvBN()
    checked = SmoothedClassifier(model, 0.5, input_range=None)
    closed_form_check(checked, model)  # the check dropped the broken copy: the model ran
    assert checked._inference_model(torch.zeros(1, 3, 1, 1)) is model
    monkeypatch.setattr(SmoothedClassifier, "_logit_difference", lambda *args, **kwargs: None)
    unchecked = SmoothedClassifier(model, 0.5, input_range=None)
    with pytest.raises(AssertionError):
        closed_form_check(unchecked, model)


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_an_untraceable_wrapper_keeps_its_own_code_and_its_children_fold(autocast):
    model = Guarded()
    smoothed = SmoothedClassifier(model, 0.5, batch_size=64, autocast=autocast)
    x = fixed_rand(2, 3, 8, 8)
    smoothed.sample_counts(x, num=100, generator=gens([1, 2]))
    runner = smoothed._inference_model(x)
    assert type(runner) is Guarded and runner is not model and runner.net is not model.net
    assert count_batchnorms(runner) == 1 and count_batchnorms(model) == 4
    with pytest.raises(ValueError, match="three channels"):  # its own forward still runs
        runner(torch.zeros(1, 4, 8, 8))
    assert smoothed._folded.folded_layers() == 3


# ---------------------------------------------------------------- following the model
def negate_head(model: Net, how: str) -> None:
    with torch.no_grad():
        if how == "optimizer step":  # w - 1 * (2 w) = -w, as SGD writes it
            for p in (model.head.weight, model.head.bias):
                p.grad = 2 * p.detach().clone()
            torch.optim.SGD([model.head.weight, model.head.bias], lr=1.0).step()
        elif how == ".data":  # not seen by the tensors' version counters
            model.head.weight.data.neg_()
            model.head.bias.data.neg_()
        elif how == "load_state_dict":
            state = model.state_dict()
            state["head.weight"], state["head.bias"] = -state["head.weight"], -state["head.bias"]
            model.load_state_dict(state)
        elif how == "replaced module":
            head = nn.Linear(16, 5)
            head.weight.copy_(-model.head.weight)
            head.bias.copy_(-model.head.bias)
            model.head = head
        elif how == "plain attribute":
            model.scale = -1.0
        elif how == "tensor attribute":  # changed in place: the trace's copy holds its own
            model.offset[0] += 100.0
        elif how == "function attribute":
            model.post = torch.neg
    if how == "batchnorm statistics":  # a train-mode pass on other data: new running stats
        model.train()
        with torch.no_grad():
            for _ in range(40):  # momentum 0.1: the statistics of the new data, nearly
                model(3 * fixed_rand(64, 3, 8, 8, seed=5) - 1)
        model.eval()


@pytest.mark.parametrize(
    "how",
    [
        "optimizer step",
        ".data",
        "load_state_dict",
        "replaced module",
        "plain attribute",
        "tensor attribute",
        "function attribute",
        "batchnorm statistics",
    ],
)
def test_a_changed_model_gets_a_new_folded_copy(how):
    model = Net().eval()
    smoothed = SmoothedClassifier(model, 0.25, batch_size=64)
    x = fixed_rand(4, 3, 8, 8, seed=3)
    before = smoothed.sample_counts(x, num=200, generator=gens([1, 2, 3, 4]))
    negate_head(model, how)
    after = smoothed.sample_counts(x, num=200, generator=gens([1, 2, 3, 4]))
    fresh = SmoothedClassifier(model, 0.25, batch_size=64, fold_batchnorm=False)
    want = fresh.sample_counts(x, num=200, generator=gens([1, 2, 3, 4]))
    assert not torch.equal(before, want)  # the change matters: a stale copy would be caught
    assert int((after - want).abs().sum()) <= 4


@pytest.mark.parametrize("folds", [True, False])  # False: BatchNorm after linear layers only
def test_an_unchanged_model_is_folded_and_checked_once(monkeypatch, folds):
    calls = []

    def counting(model):
        calls.append(model)
        return fold_batchnorm(model)

    monkeypatch.setattr(smoothing, "fold_batchnorm", counting)
    model, x = (Net(), fixed_rand(2, 3, 8, 8)) if folds else (small_mlp(6, 3), fixed_rand(2, 6))
    smoothed = SmoothedClassifier(model, 0.5, batch_size=64)
    for num in (10, 100, 30):
        smoothed.sample_counts(x, num=num, generator=gens([num, 1]))
    smoothed.certify(x, n=50, n0=10)
    assert len(calls) == 1 and smoothed._folded.folded_layers() == (3 if folds else 0)


class GuardedShift(Guarded):
    """An untraceable wrapper (a shallow copy shares its attributes) with a tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = torch.zeros(5)

    def forward(self, x):
        return super().forward(x) + self.shift


def test_a_rebound_attribute_of_an_untraceable_wrapper_gets_a_new_copy():
    model = GuardedShift().eval()
    smoothed = SmoothedClassifier(model, 0.25, batch_size=64)
    x = fixed_rand(2, 3, 8, 8, seed=3)
    before = smoothed.sample_counts(x, num=100, generator=gens([1, 2]))
    model.shift = torch.tensor([100.0, 0.0, 0.0, 0.0, 0.0])  # the old copy holds the old one
    after = smoothed.sample_counts(x, num=100, generator=gens([1, 2]))
    assert before[:, 0].sum() < 200 and after[:, 0].tolist() == [100, 100]
    assert smoothed._folded.folded_layers() == 3


def test_the_fold_checks_rows_do_not_depend_on_the_batch_size():
    seen = {}
    for batch_size in (5, "auto"):
        spy = Spy(Net().eval())  # the checks run the model itself, which records its batches
        smoothed = SmoothedClassifier(spy, 0.5, batch_size=batch_size, memory_format="preserve")
        smoothed.sample_counts(fixed_rand(40, 3, 8, 8), num=1, generator=gens(range(40)))
        assert smoothed._folded.folded_layers() == 3
        checked = torch.cat(spy.seen)[:32]  # then the votes, which the folded copy gives
        assert max(b.shape[0] for b in spy.seen) <= (5 if batch_size == 5 else 32)
        seen[batch_size] = checked
    assert torch.equal(seen[5], seen["auto"])
    assert torch.equal(seen[5], fixed_rand(40, 3, 8, 8)[:32])


def test_the_fold_check_is_tight_under_autocast(monkeypatch):
    """A copy 1% off passes bfloat16's tolerance but not float32's: the check runs in float32."""

    def one_percent_off(model):
        folded, count = fold_batchnorm(model)
        return nn.Sequential(folded, Scale(1.01)), count

    monkeypatch.setattr(smoothing, "fold_batchnorm", one_percent_off)
    model = Net().eval()
    x = fixed_rand(2, 3, 8, 8)
    smoothed = SmoothedClassifier(model, 0.5, autocast=torch.bfloat16)
    smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert smoothed._inference_model(x) is model and smoothed._folded.folded_layers() == 0


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class Fails(nn.Module):
    def forward(self, x):
        raise RuntimeError("a copy that fails")


@pytest.mark.parametrize("wrong", [Scale(1.01), Fails()], ids=["differs", "fails"])
def test_a_rejected_copy_is_checked_again_once_the_weights_change(monkeypatch, wrong):
    calls = []

    def off_the_first_time(model):
        folded, count = fold_batchnorm(model)
        calls.append(count)
        return (nn.Sequential(folded, wrong) if len(calls) == 1 else folded), count

    monkeypatch.setattr(smoothing, "fold_batchnorm", off_the_first_time)
    model = Net().eval()
    smoothed = SmoothedClassifier(model, 0.5)
    x = fixed_rand(2, 3, 8, 8)
    for _ in range(2):  # rejected, and not tried again while the model is unchanged
        smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert len(calls) == 1 and smoothed._folded.folded_layers() == 0
    with torch.no_grad():
        model.head.weight.mul_(2.0)
    smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert len(calls) == 2 and smoothed._folded.folded_layers() == 3


def test_a_first_call_the_model_fails_is_not_held_against_it():
    smoothed = SmoothedClassifier(Net().eval(), 0.5)
    x = fixed_rand(2, 3, 8, 8)
    with pytest.raises(RuntimeError):  # float64 inputs for a float32 model: the model's error
        smoothed.sample_counts(x.double(), num=10)
    smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert smoothed._folded.folded_layers() == 3


def test_a_model_that_stops_folding_drops_its_copy():
    model = Net().eval()
    smoothed = SmoothedClassifier(model, 0.5)
    x = fixed_rand(2, 3, 8, 8)
    smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert "(3 BatchNorm layers folded)" in repr(smoothed)
    model.bn.register_forward_hook(lambda *args: None)
    smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert smoothed._folded.folded_layers() == 0 and "folded" not in repr(smoothed)
    assert smoothed._folded._snapshot is None  # nor keeps the memory


def test_nan_in_a_tensor_does_not_rebuild_the_copy_on_every_call(monkeypatch):
    calls = []

    def counting(model):
        calls.append(model)
        return fold_batchnorm(model)

    monkeypatch.setattr(smoothing, "fold_batchnorm", counting)
    model = Net().eval()
    model.unused = torch.tensor([1.0, float("nan")])
    model.unset = float("nan")
    smoothed = SmoothedClassifier(model, 0.5)
    x = fixed_rand(2, 3, 8, 8)
    for _ in range(3):
        smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert len(calls) == 1 and smoothed._folded.folded_layers() == 3
    model.unused[1] = 0.0  # but a change of either is seen
    smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    model.unset = 1.0
    smoothed.sample_counts(x, num=10, generator=gens([1, 2]))
    assert len(calls) == 3


# ---------------------------------------------------------------- where it stays out
class Configured(Net):
    """An attribute of a kind whose in-place changes could not be seen."""

    def __init__(self) -> None:
        super().__init__()
        self.config = argparse.Namespace(flip=False)

    def forward(self, x):
        out = super().forward(x)
        return -out if self.config.flip else out


class Tied(nn.Module):
    """A convolution's weight read again elsewhere (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # test-only: fixed weights
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 8 * 8, 4)
        randomize_batchnorms(self)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.nn.functional.conv2d(h, self.conv.weight, padding=1)
        return self.head(h.flatten(1))


def holding_itself() -> nn.Module:
    model = Net()
    model.loop = []
    model.loop.append(model.loop)
    return model


@pytest.mark.parametrize(
    "model", [Configured(), holding_itself(), Tied(), small_mlp(6, 3)], ids=type
)
def test_models_that_cannot_fold_safely_run_as_they_are(model):
    model.eval()
    shape = (2, 6) if isinstance(model, nn.Sequential) else (2, 3, 8, 8)
    smoothed = SmoothedClassifier(model, 0.5, input_range=None)
    smoothed.sample_counts(torch.rand(shape), num=10)
    assert smoothed._inference_model(torch.rand(shape)) is model
    assert smoothed._folded.folded_layers() == 0 and smoothed._folded._snapshot is None
    # refused before the check, not caught by it
    if isinstance(model, Net):
        with pytest.raises(Unfoldable, match="Namespace|holds itself"):
            FoldedCopy().lookup(model)
    else:
        assert fold_batchnorm(model)[1] == 0


def test_models_with_forward_hooks_run_as_they_are():
    model = Net().eval()
    rows = []
    handle = model.bn.register_forward_hook(lambda module, args, out: rows.append(len(out)))
    smoothed = SmoothedClassifier(model, 0.5, batch_size=64, memory_format="preserve")
    x = fixed_rand(2, 3, 8, 8)
    smoothed.sample_counts(x, num=100, generator=gens([1, 2]))
    assert sum(rows) == 200 and smoothed._inference_model(x) is model
    handle.remove()
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert SmoothedClassifier(model, 0.5)._inference_model(x) is model  # a global hook
    finally:
        hook.remove()
    assert SmoothedClassifier(model, 0.5)._inference_model(x) is not model


class Shared(nn.Module):
    """A convolution whose output also feeds the residual sum, and one called twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # test-only: fixed weights
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.twice = nn.Conv2d(3, 3, 1)
        self.bn2 = nn.BatchNorm2d(3)
        self.folds = nn.Conv2d(3, 3, 1)
        self.bn3 = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 8 * 8, 4)
        randomize_batchnorms(self)

    def forward(self, x):
        h = self.conv(x)
        h = self.bn(h) + h  # the conv's output has two uses: BN cannot fold into it
        h = self.twice(self.bn2(self.twice(h)))  # the same conv before and after a BN
        return self.head(self.bn3(self.folds(h)).flatten(1))


def test_only_layers_with_a_single_use_fold():
    model = Shared().eval()
    folded, count = fold_batchnorm(model)
    assert count == 1  # bn3 only
    probe = fixed_rand(16, 3, 8, 8)
    torch.testing.assert_close(logits(folded, probe), logits(model, probe), rtol=1e-5, atol=1e-5)


def test_where_folding_applies():
    model = Net().eval()
    x = fixed_rand(2, 3, 8, 8)
    meta = torch.empty(2, 3, 8, 8, device="meta")
    assert SmoothedClassifier(model, 0.5)._inference_model(meta) is model  # auto: the CPU only
    assert SmoothedClassifier(model, 0.5, fold_batchnorm=False)._inference_model(x) is model
    plain = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    assert SmoothedClassifier(plain, 0.5)._inference_model(x) is plain  # nothing to fold
    assert fold_batchnorm(plain) == (plain, 0)
    no_stats = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))
    assert count_batchnorms(no_stats) == 0 and fold_batchnorm(no_stats) == (no_stats, 0)
    compiled = SmoothedClassifier(model, 0.5, compile={"backend": "eager"})
    assert compiled._inference_model(x) is model  # compile: the model as it is


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (None, TypeError, r"fold_batchnorm must be True, False or 'auto', got NoneType"),
        ("yes", ValueError, r"fold_batchnorm must be True, False or 'auto', got 'yes'"),
        (1, TypeError, r"got int"),
        (np.array(["auto"]), TypeError, r"got ndarray"),  # not compared elementwise
    ],
)
def test_fold_batchnorm_validation(value, exc, match):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, fold_batchnorm=value)


# ---------------------------------------------------------------- runner and command line
def test_the_runner_records_the_folding(tmp_path):
    from torch.utils.data import TensorDataset

    from rsmooth.runner import certify_dataset

    data = TensorDataset(fixed_rand(2, 3, 8, 8), torch.tensor([0, 1]))
    for fold, model, expected in (
        ("auto", Net().eval(), 3),
        ("auto", nn.Sequential(nn.Flatten(), nn.Linear(192, 5)), 0),
        (False, Net().eval(), None),
    ):
        out = tmp_path / f"{fold}-{expected}.tsv"
        smoothed = SmoothedClassifier(model, 0.5, fold_batchnorm=fold)
        certify_dataset(smoothed, data, out, n0=10, n=50, progress=False)
        config = json.loads(out.with_name(out.name + ".json").read_text())["config"]
        assert config["fold_batchnorm"] == fold
        assert config.get("batchnorm_folded") == expected


def test_the_command_line_turns_folding_off(tmp_path, capsys):
    from rsmooth.cli import build_parser, main

    base = ["certify", "--model", "m:f", "--dataset", "digits", "--sigma", "0.5", "--out", "o"]
    assert build_parser().parse_args(base).fold_batchnorm is True
    assert build_parser().parse_args([*base, "--no-fold-batchnorm"]).fold_batchnorm is False
    out = tmp_path / "r.tsv"
    argv = [
        "certify", "--model", "runner_helpers:tiny_model", "--dataset",
        "runner_helpers:tiny_dataset", "--sigma", "0.25", "--n", "50", "--n0", "10", "--max",
        "2", "--out", str(out), "--no-progress", "--factory-loads-weights", "--no-fold-batchnorm",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads(out.with_name(out.name + ".json").read_text())["config"]
    assert config["fold_batchnorm"] is False


# ---------------------------------------------------------------- the A/B benchmark
@pytest.mark.slow
def test_fold_batchnorm_benchmark_smoke(tmp_path):
    bench = load_script("benchmarks/fold_batchnorm.py", "rsmooth_bench_fold_batchnorm")
    out = tmp_path / "fold"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())["result"]
    assert result["batchnorm_folded"] == 21
    for row in [*result["forward"].values(), result["certify auto"]]:
        assert row["folded"] > 0 and row["as written"] > 0 and row["ratio"]["min"] > 0
    assert "folded ÷ as written" in out.with_suffix(".md").read_text()


# ---------------------------------------------------------------- residual additions in place
def additions_in_place(module: nn.Module) -> int:
    return sum(
        node.target is add_into
        for sub in module.modules()
        if isinstance(sub, torch.fx.GraphModule)
        for node in sub.graph.nodes
    )


def test_a_residual_addition_adds_into_the_convolutions_output(monkeypatch):
    model = Net().eval()
    folded, count = fold_batchnorm(model)
    assert count == 3 and additions_in_place(folded) == 1  # conv + shortcut, both folded
    monkeypatch.setattr(folding, "_add_in_place", lambda traced, modules: None)
    out_of_place, _ = fold_batchnorm(model)
    assert additions_in_place(out_of_place) == 0
    probe = fixed_rand(64, 3, 8, 8, seed=1)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            got, want = folded(probe), out_of_place(probe)
        assert torch.equal(got, want)  # bit for bit: the same additions
    # the sum is laid out as out of place: a channels_last input gives channels_last sums
    sums = {}
    for name, module in (("in place", folded), ("out of place", out_of_place)):
        module.register_forward_hook(lambda m, args, out, name=name: sums.setdefault(name, out))
    with torch.inference_mode():
        folded(probe.contiguous(memory_format=torch.channels_last))
        out_of_place(probe.contiguous(memory_format=torch.channels_last))
    assert sums["in place"].stride() == sums["out of place"].stride()


class AddsToAConvolution(nn.Module):
    """``x + conv(h)`` (the conv's output second), then a ``view`` that needs the sum's layout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # test-only: fixed weights
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 2)
        randomize_batchnorms(self)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        y = x.contiguous() + self.conv2(h)  # laid out like x.contiguous(), whatever conv2 gives
        return self.head(y.view(y.shape[0], -1))


def test_an_addition_never_adds_into_its_second_operand():
    model = AddsToAConvolution().eval()
    folded, count = fold_batchnorm(model)
    assert count == 1 and additions_in_place(folded) == 0
    x = fixed_rand(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    counts = SmoothedClassifier(model, 0.25).sample_counts(x, num=50, generator=gens([1, 2]))
    plain = SmoothedClassifier(model, 0.25, fold_batchnorm=False)
    want = plain.sample_counts(x, num=50, generator=gens([1, 2]))
    assert int((counts - want).abs().sum()) <= 2


class SharedOutput(nn.Module):
    """A convolution whose output is read twice, added to an activation (not a convolution's)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # test-only: fixed weights
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)
        randomize_batchnorms(self)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        z = self.conv2(h)
        return self.head(((z + h) * z).flatten(1))


def test_an_addition_adds_in_place_only_into_an_output_nothing_else_reads():
    model = SharedOutput().eval()
    folded, count = fold_batchnorm(model)
    assert count == 1 and additions_in_place(folded) == 0
    probe = fixed_rand(16, 3, 8, 8)
    torch.testing.assert_close(logits(folded, probe), logits(model, probe), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("a", "b", "in_place"),
    [
        (torch.ones(2, 3), torch.full((2, 3), 2.0), True),
        (torch.ones(2, 3), torch.full((3,), 2.0), True),  # b broadcasts to a's shape
        (torch.ones(1, 3), torch.full((2, 3), 2.0), False),  # the sum is larger than a
        (torch.ones(2, 3), torch.full((2, 3), 2.0, dtype=torch.float64), False),  # promoted
        (torch.ones(2, 3, dtype=torch.bfloat16), torch.full((2, 3), 2.0), False),  # autocast
        (torch.ones(2, 3), 2.0, False),  # not a tensor
    ],
)
def test_add_into_adds_in_place_only_when_the_sum_is_that_tensor(a, b, in_place):
    want = a + b
    before = a.clone()
    with torch.inference_mode():
        got = add_into(a, b)
    assert torch.equal(got, want) and got.dtype == want.dtype
    assert (got is a) is in_place
    assert torch.equal(a, want if in_place else before)
    if in_place:  # with gradients on: never in place
        a = before.clone()
        assert add_into(a, b) is not a and torch.equal(a, before)
