"""The forward runner: the user's model as written, its layout, compile, autocast and checks."""

import math
import warnings

import pytest
import torch
from conftest import Spy, cnn, fixed_rand, gens
from torch import nn

from rsmooth import SmoothedClassifier


# ---------------------------------------------------------------- model-output hints
class Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.linear, self.kind = nn.Linear(2, 3), kind

    def forward(self, x):
        logits = self.linear(x)
        if self.kind == "tuple":
            return logits, x
        if self.kind == "dict":
            return {"logits": logits}

        class Output:
            pass

        output = Output()
        output.logits = logits
        return output


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("tuple", r"got a tuple.*model\(x\)\[0\]"),
        ("dict", r"got a dict.*model\(x\)\[\"logits\"\]"),
        ("object", r"got a Output.*model\(x\)\.logits"),
    ],
)
def test_a_model_returning_a_container_gets_a_hint(kind, match):
    with pytest.raises(TypeError, match=match):
        SmoothedClassifier(Returns(kind), 0.5).certify(torch.zeros(2, 2), n=20)


def test_one_unbatched_image_gets_the_unsqueeze_hint():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"inputs\.unsqueeze\(0\)") as info:
        SmoothedClassifier(model, 0.5).predict(torch.zeros(1, 8, 8), n=20)
    assert "channels" in str(info.value)  # the model's own message is kept
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        SmoothedClassifier(nn.Identity(), 0.5).certify(torch.zeros(3, 4, 4), n=20)


@pytest.mark.slow
def test_an_export_with_a_fixed_batch_size_gets_the_dynamic_batch_hint():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    exported = torch.export.export(model, (torch.rand(2, 1, 2, 2),)).module()
    with pytest.raises(ValueError, match=r"dynamic batch dimension.*Dim\('batch'\)"):
        SmoothedClassifier(exported, 0.5, batch_size=64).certify(torch.rand(3, 1, 2, 2), n=100)


# ---------------------------------------------------------------- compile
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_feeds_fixed_shapes_and_compiles_once(fresh_dynamo):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    shapes = []

    def backend(graph, example_inputs):
        shapes.extend(tuple(t.shape) for t in example_inputs if tuple(t.shape[1:]) == (1, 8, 8))
        return counter(graph, example_inputs)

    model = cnn()
    compiled = SmoothedClassifier(model, 0.5, batch_size=64, compile={"backend": backend})
    eager = SmoothedClassifier(model, 0.5, batch_size=64)
    x = torch.rand(3, 1, 8, 8)
    for num, inputs in [(10, x[:1]), (200, x), (37, x[1:])]:  # 10 < 64 rows: padded
        got = compiled.sample_counts(inputs, num=num, generator=torch.Generator().manual_seed(num))
        want = eager.sample_counts(inputs, num=num, generator=torch.Generator().manual_seed(num))
        assert torch.equal(got, want)  # padding rows are discarded
    compiled.certify(x, n=100, n0=10, generator=torch.Generator().manual_seed(0))
    assert counter.frame_count == 1  # no recompilation on later calls
    assert shapes == [(64, 1, 8, 8)]
    assert model.training is False and "compile={'backend'" in repr(compiled)


@pytest.mark.slow
def test_a_compiled_model_must_return_n_by_k_logits(fresh_dynamo):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.Unflatten(1, (3, 2)))
    smoothed = SmoothedClassifier(model, 0.5, batch_size=32, compile={"backend": "eager"})
    with pytest.raises(ValueError, match=r"logits of shape \[N, num_classes\].*\(32, 3, 2\)"):
        smoothed.certify(torch.rand(2, 4), n=20)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ("yes", TypeError, "compile must be a bool or a dict of torch.compile options, got str"),
        ({"dynamic": True}, ValueError, "compile must not set 'dynamic'"),
    ],
)
def test_compile_validation(value, exc, match):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, compile=value)


# ---------------------------------------------------------------- autocast and channels_last
class DtypeProbe(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.dtypes = model, set()

    def forward(self, x):
        out = self.model(x)
        self.dtypes.add(out.dtype)
        return out


def test_bfloat16_autocast_counts_match_float32_on_a_well_separated_model():
    torch.manual_seed(0)  # test-only: fixed weights
    linear = nn.Linear(6, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3, 6) * 4.0)
        linear.bias.zero_()
    x = torch.eye(3, 6)[[0, 1, 2, 0]] * 2.0  # each input far (in sigma units) from the others
    probe = DtypeProbe(linear)
    half = SmoothedClassifier(
        probe, 0.25, batch_size=256, autocast=torch.bfloat16, input_range=None
    )
    full = SmoothedClassifier(linear, 0.25, batch_size=256, input_range=None)
    a = half.certify(x, n=2000, n0=50, generator=torch.Generator().manual_seed(1))
    b = full.certify(x, n=2000, n0=50, generator=torch.Generator().manual_seed(1))
    assert probe.dtypes == {torch.bfloat16}  # the forward passes did run in bfloat16
    assert torch.equal(a.count, b.count) and torch.equal(a.prediction, b.prediction)
    assert a.prediction.tolist() == [0, 1, 2, 0]
    assert "autocast=torch.bfloat16" in repr(half)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ("bf16", TypeError, "autocast must be a torch.dtype or None, got str"),
        (torch.float32, ValueError, "autocast must be torch.bfloat16 or torch.float16, got"),
    ],
)
def test_autocast_validation(value, exc, match):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, autocast=value)


class UnsupportedAutocast:
    """Stands in for torch.autocast with a dtype the device does not support: torch warns."""

    def __init__(self, device_type, dtype):
        warnings.warn("In CPU autocast, but the target dtype is not supported.", stacklevel=2)


def test_autocast_with_a_dtype_the_device_does_not_support(monkeypatch):
    smoothed = SmoothedClassifier(nn.Linear(2, 2), 0.5, autocast=torch.float16)
    monkeypatch.setattr(torch, "autocast", UnsupportedAutocast)
    with pytest.raises(ValueError, match=r"autocast=torch.float16 is not supported on cpu"):
        smoothed.certify(torch.zeros(1, 2), n=20)
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="autocast is not available on device type 'cpu'"):
        smoothed.certify(torch.zeros(1, 2), n=20)


def test_channels_last_models_and_inputs():
    def cnn3():
        torch.manual_seed(0)  # test-only: the same weights in both layouts
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
        ).eval()

    x = torch.rand(3, 3, 8, 8)
    expected = SmoothedClassifier(
        cnn3(), 0.5, batch_size=100, memory_format="preserve"
    ).sample_counts(x, num=300, generator=gens([1, 2, 3]))
    spy = Spy(cnn3().to(memory_format=torch.channels_last))
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=100)
    x_last = x.contiguous(memory_format=torch.channels_last)
    assert not x_last.is_contiguous()
    counts = smoothed.sample_counts(x_last, num=300, generator=gens([1, 2, 3]))
    assert torch.equal(counts, expected)  # the same noise per element, whatever the layout
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in spy.seen)
    assert all(not b.is_contiguous() for b in spy.seen)


class ViewsItsInput(nn.Module):
    """Flattens with ``view``, which a channels_last batch refuses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # test-only: fixed weights
        self.linear = nn.Linear(48, 4)

    def forward(self, x):
        return self.linear(x.view(x.shape[0], -1))


class ReadsRawMemory(ViewsItsInput):
    """Flattens the input's storage as if it were contiguous: wrong for channels_last."""

    def forward(self, x):
        return self.linear(torch.as_strided(x, (x.shape[0], 48), (48, 1)))


def bn_cnn():
    torch.manual_seed(0)  # test-only: fixed weights
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)
    )


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_auto_memory_format_gives_a_cpu_model_channels_last_batches(autocast):
    model = bn_cnn().train()  # in train mode: the engine must use eval and restore train
    model[1].running_mean.fill_(0.1)
    running = [t.clone() for t in (model[1].running_mean, model[1].running_var)]
    spy = Spy(model)
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=64, autocast=autocast)
    x = fixed_rand(3, 3, 4, 4)
    counts = smoothed.sample_counts(x, num=300, generator=gens([1, 2, 3]))
    # the layout check: the clean inputs once in each layout; then every batch channels_last
    assert [b.shape[0] for b in spy.seen[:2]] == [3, 3]
    assert spy.seen[0].is_contiguous() and not spy.seen[1].is_contiguous()
    votes = spy.seen[2:]
    assert sum(b.shape[0] for b in votes) == 900
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in votes)
    assert all(not b.is_contiguous() for b in votes)
    assert "memory_format='auto' (channels_last for [3, 4, 4] float32 on cpu)" in repr(smoothed)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running[0])
    assert torch.equal(model[1].running_var, running[1])
    spy.seen.clear()  # checked once per input shape, dtype and device
    smoothed.sample_counts(x, num=100, generator=gens([1, 2, 3]))
    assert sum(b.shape[0] for b in spy.seen) == 300
    # float32: the same votes as the standard layout, up to a rounding difference for a sample
    # on a decision boundary (bfloat16 rounds far more coarsely, and how depends on the CPU)
    if autocast is None:
        standard = SmoothedClassifier(model, 0.5, batch_size=64, memory_format="preserve")
        want = standard.sample_counts(x, num=300, generator=gens([1, 2, 3]))
        assert int((counts - want).abs().sum()) <= 4


def test_auto_memory_format_keeps_the_standard_layout_for_a_model_that_views_its_input():
    x = fixed_rand(2, 3, 4, 4)
    spy = Spy(ViewsItsInput())
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = smoothed.sample_counts(x, num=200, generator=gens([1, 2]))
    assert not spy.seen[1].is_contiguous()  # the check's try, which the model refused
    assert all(b.is_contiguous() for b in spy.seen[2:])
    assert "channels_last" not in repr(smoothed)
    plain = SmoothedClassifier(ViewsItsInput(), 0.5, batch_size=64, memory_format="preserve")
    assert torch.equal(counts, plain.sample_counts(x, num=200, generator=gens([1, 2])))
    forced = SmoothedClassifier(ViewsItsInput(), 0.5, memory_format="channels_last")
    with pytest.raises(RuntimeError, match="view size"):  # asked for explicitly: its error
        forced.sample_counts(x, num=20)


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])  # bfloat16: a looser tolerance
def test_auto_memory_format_refuses_a_model_whose_logits_depend_on_the_layout(autocast):
    x = fixed_rand(2, 3, 4, 4)
    smoothed = SmoothedClassifier(ReadsRawMemory(), 0.5, batch_size=64, autocast=autocast)
    with pytest.warns(RuntimeWarning, match="differ from those on the same inputs") as caught:
        counts = smoothed.sample_counts(x, num=400, generator=gens([1, 2]))
    assert caught[0].filename == __file__  # it points at the caller's line, not at rsmooth
    plain = SmoothedClassifier(
        ReadsRawMemory(), 0.5, batch_size=64, autocast=autocast, memory_format="preserve"
    )
    assert torch.equal(counts, plain.sample_counts(x, num=400, generator=gens([1, 2])))
    # without the check (channels_last forced) this model's votes are wrong: the check matters
    forced = SmoothedClassifier(
        ReadsRawMemory(), 0.5, batch_size=64, autocast=autocast, memory_format="channels_last"
    )
    assert not torch.equal(counts, forced.sample_counts(x, num=400, generator=gens([1, 2])))


class NaNForDarkImages(nn.Module):
    """A small CNN whose logits are NaN for an input whose mean is below 0.2."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = bn_cnn().eval()

    def forward(self, x):
        dark = x.mean(dim=(1, 2, 3)) < 0.2
        return self.cnn(x).masked_fill(dark[:, None], float("nan"))


def test_auto_memory_format_check_accepts_nan_logits_in_both_layouts():
    x = fixed_rand(3, 3, 4, 4)
    x[1] = 0.0  # NaN logits for the clean input (in both layouts), and for some noisy samples
    smoothed = SmoothedClassifier(NaNForDarkImages(), 0.1, batch_size=64, nonfinite="count_against")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = smoothed.sample_counts(x, num=200, generator=gens([1, 2, 3]))
    assert "channels_last for [3, 4, 4] float32 on cpu" in repr(smoothed)
    assert counts[1].sum() < 200 and counts[0].sum() == counts[2].sum() == 200


def test_the_layout_check_respects_an_integer_batch_size():
    spy = Spy(bn_cnn().eval())
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=5)
    smoothed.sample_counts(fixed_rand(40, 3, 4, 4), num=3)
    assert max(b.shape[0] for b in spy.seen) == 5
    # the check: the first 32 inputs in pieces of 5, in each layout (the same rows as "auto")
    checked = spy.seen[:14]
    assert [b.shape[0] for b in checked] == [5, 5, 5, 5, 5, 5, 2] * 2
    assert all(b.is_contiguous() for b in checked[:7])
    assert not any(b.is_contiguous() for b in checked[7:])


@pytest.mark.slow
def test_compile_with_channels_last_batches_compiles_once(fresh_dynamo):
    from torch._dynamo.testing import CompileCounter

    counter, layouts = CompileCounter(), []

    def backend(graph, example_inputs):
        layouts.extend(
            t.is_contiguous(memory_format=torch.channels_last)
            for t in example_inputs
            if tuple(t.shape[1:]) == (3, 4, 4)
        )
        return counter(graph, example_inputs)

    model = bn_cnn().eval()
    compiled = SmoothedClassifier(model, 0.5, batch_size=64, compile={"backend": backend})
    eager = SmoothedClassifier(model, 0.5, batch_size=64)
    x = fixed_rand(3, 3, 4, 4)
    for num in (300, 100):
        got = compiled.sample_counts(x, num=num, generator=gens([num, 1, 2]))
        assert torch.equal(got, eager.sample_counts(x, num=num, generator=gens([num, 1, 2])))
    assert counter.frame_count == 1 and layouts == [True]


def has_channels_last_strides(batch: torch.Tensor) -> bool:
    """Whether ``batch`` has channels-last strides, which ``is_contiguous`` cannot tell for one
    channel or 1x1 images (both layouts are contiguous there)."""
    return batch.stride() == torch.empty(batch.shape, memory_format=torch.channels_last).stride()


@pytest.mark.parametrize(
    "inputs",
    [
        fixed_rand(2, 12),  # not images
        fixed_rand(2, 1, 4, 4),  # one channel: contiguous either way, but other strides
        fixed_rand(2, 3, 1, 1),  # 1x1 images: the same
        fixed_rand(2, 3, 2, 2).to(torch.float64),  # checked like float32, on its own key
    ],
)
def test_auto_memory_format_checks_every_image_shape_and_leaves_other_inputs_alone(inputs):
    features = math.prod(inputs.shape[1:])
    spy = Spy(nn.Sequential(nn.Flatten(), nn.Linear(features, 3)).to(inputs.dtype))
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=64)
    smoothed.sample_counts(inputs, num=100, generator=gens([1, 2]))
    image = inputs.dim() == 4
    assert sum(b.shape[0] for b in spy.seen) == 200 + (2 * 2 if image else 0)
    votes = spy.seen[2:] if image else spy.seen
    assert sum(b.shape[0] for b in votes) == 200
    if image:  # checked (the standard layout, then channels_last), then channels_last strides
        assert not has_channels_last_strides(spy.seen[0])
        assert has_channels_last_strides(spy.seen[1])
        assert all(has_channels_last_strides(b) for b in votes)
        assert f"{list(inputs.shape[1:])} {str(inputs.dtype)[6:]} on cpu" in repr(smoothed)
    else:
        assert all(b.is_contiguous() for b in spy.seen)
        assert "channels_last" not in repr(smoothed)


def one_channel_cnn() -> nn.Module:
    torch.manual_seed(0)  # test-only: fixed weights
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 4),
    ).eval()


def test_one_channel_images_reach_the_model_with_channels_last_strides():
    # A one-channel batch is contiguous in both layouts, but a convolution picks its algorithm
    # (and its output's layout) from the strides: with channels-last ones every activation is
    # channels_last, which oneDNN runs faster (LeNet: about 1.6x on two CPU cores).
    x = fixed_rand(3, 1, 8, 8)
    spy = Spy(one_channel_cnn())
    activations: list[torch.Tensor] = []
    spy.model[2].register_forward_hook(lambda module, args, out: activations.append(out))
    counts = SmoothedClassifier(spy, 0.5, batch_size=64).sample_counts(
        x, num=300, generator=gens([1, 2, 3])
    )
    votes = spy.seen[2:]
    assert sum(b.shape[0] for b in votes) == 900
    assert all(has_channels_last_strides(b) for b in votes)
    assert all(a.is_contiguous(memory_format=torch.channels_last) for a in activations[2:])
    assert not any(a.is_contiguous() for a in activations[2:])
    # the same noise per element; the votes of the standard layout up to rounding at a boundary
    standard = SmoothedClassifier(one_channel_cnn(), 0.5, batch_size=64, memory_format="preserve")
    want = standard.sample_counts(x, num=300, generator=gens([1, 2, 3]))
    assert int((counts - want).abs().sum()) <= 4
    # forced: the same strides without the check
    forced = Spy(one_channel_cnn())
    SmoothedClassifier(forced, 0.5, batch_size=64, memory_format="channels_last").sample_counts(
        x, num=10, generator=gens([1, 2, 3])
    )
    assert len(forced.seen) == 1 and has_channels_last_strides(forced.seen[0])


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (None, TypeError, r"memory_format must be one of 'auto', 'preserve', 'channels_last', got"),
        ("nhwc", ValueError, r"memory_format must be one of .*, got 'nhwc'"),
    ],
)
def test_memory_format_validation(value, exc, match):
    with pytest.raises(exc, match=match):
        SmoothedClassifier(nn.Linear(2, 2), 0.5, memory_format=value)


def test_channels_last_memory_format_needs_image_inputs():
    smoothed = SmoothedClassifier(nn.Linear(3, 2), 0.5, memory_format="channels_last")
    assert "memory_format='channels_last'" in repr(smoothed)
    with pytest.raises(ValueError, match=r"needs 4-D .* or 5-D .* inputs, got shape \(2, 3\)"):
        smoothed.sample_counts(fixed_rand(2, 3), num=10)


class Dropout(nn.Module):
    """A CNN whose forward applies dropout whatever the mode: its outputs are random."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = bn_cnn().eval()

    def forward(self, x):
        return self.cnn(nn.functional.dropout(x, 0.5, training=True))


def test_a_random_model_gets_no_layout_warning_and_the_standard_layout():
    x = fixed_rand(3, 3, 4, 4)
    spy = Spy(Dropout())
    smoothed = SmoothedClassifier(spy, 0.5, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spurious RuntimeWarning
        smoothed.sample_counts(x, num=100, generator=gens([1, 2, 3]))
    assert "channels_last" not in repr(smoothed)
    assert all(b.is_contiguous() for b in spy.seen[3:])


def test_the_unbatched_hint_appears_whatever_a_normalising_model_raises():
    from rsmooth.models import NormalizeLayer

    model = nn.Sequential(NormalizeLayer([0.5] * 3, [0.2] * 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(
        ValueError, match=r"add the batch dimension with inputs\.unsqueeze\(0\)"
    ) as info:
        SmoothedClassifier(model, 0.25).certify(fixed_rand(3, 32, 32), n=100, n0=10)
    message = str(info.value)
    assert "inputs has shape (3, 32, 32)" in message
    assert "must have 3 channels" in message  # the model's own message is kept, after the hint
