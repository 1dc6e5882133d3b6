from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from denoised_helpers import LinearNoisePredictor, denoised_tiny_model, linear_schedule
from runner_helpers import CERTIFY, TinyLinear, rows, tiny_dataset
from torch import nn

from rsmooth import SmoothedClassifier
from rsmooth.cli import main
from rsmooth.denoised import (
    DenoisedClassifier,
    DenoiserMSELoss,
    DenoiserStabilityLoss,
    DiffusionDenoiser,
    denoiser_mse_loss,
    denoiser_stability_loss,
    diffusion_timestep,
)
from rsmooth.functional import sample_noise
from rsmooth.metrics import certified_accuracy
from rsmooth.runner import certify_dataset


# ---------------------------------------------------------------------------- one-shot formula
def hand_timestep(alphas: list[float], sigma: float) -> int:
    target = 1.0 / (1.0 + 4.0 * sigma**2)
    best = 0
    for i, a in enumerate(alphas):
        if abs(a - target) < abs(alphas[best] - target):
            best = i
    return best


def hand_one_shot(noisy: torch.Tensor, a: list[float], b: list[float], alpha_bar: float):
    """Element by element: the noise predictor eps = a_c * x_t + b_c of LinearNoisePredictor."""
    out = torch.empty(noisy.shape, dtype=torch.float64)
    for index in np.ndindex(*noisy.shape):
        c = index[1]
        x_t = math.sqrt(alpha_bar) * (2.0 * float(noisy[index]) - 1.0)
        eps = a[c] * x_t + b[c]
        x0 = (x_t - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        out[index] = min(max((x0 + 1.0) / 2.0, 0.0), 1.0)
    return out


class ReturnsSample(nn.Module):
    """Wraps a noise predictor so that it returns an object with .sample (diffusers' convention)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x_t, t):
        return types.SimpleNamespace(sample=self.inner(x_t, t))


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("convention", ["tensor", "sample", "learned-variance"])
def test_one_shot_formula_matches_a_hand_computation(sigma, convention):
    channels = 2
    predictor = LinearNoisePredictor(
        channels, out_channels=2 * channels if convention == "learned-variance" else None
    ).double()
    model = ReturnsSample(predictor) if convention == "sample" else predictor
    schedule = linear_schedule()
    denoiser = DiffusionDenoiser(model, schedule, sigma=sigma)
    g = torch.Generator().manual_seed(int(sigma * 100))
    clean = torch.rand(3, channels, 4, 5, generator=g, dtype=torch.float64)
    noisy = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)

    alphas = schedule.tolist()
    t = hand_timestep(alphas, sigma)
    a, b = predictor.a.tolist(), predictor.b.tolist()  # learned variance: the first C are eps
    expected = hand_one_shot(noisy, a, b, alphas[t])
    assert denoiser.timestep == t
    assert denoiser.alpha_bar == alphas[t]
    assert torch.allclose(denoiser(noisy), expected, rtol=0, atol=1e-12)
    inside = (expected > 0) & (expected < 1)
    assert inside.any() and not inside.all()  # the clamp is exercised, and so is the formula


def test_the_model_gets_the_timestep_as_a_long_tensor_per_input():
    seen = []

    def model(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    denoiser = DiffusionDenoiser(model, linear_schedule(), sigma=0.5)
    denoiser(torch.rand(4, 1, 3, 3))
    assert seen[0].dtype == torch.long and seen[0].tolist() == [denoiser.timestep] * 4


def test_repr_prints_the_assumed_noise_level_against_two_sigma():
    denoiser = DiffusionDenoiser(lambda x, t: torch.zeros_like(x), linear_schedule(), sigma=0.5)
    level = math.sqrt((1 - denoiser.alpha_bar) / denoiser.alpha_bar)
    assert denoiser.noise_level == pytest.approx(level)
    assert abs(level - 1.0) < 0.002  # the discretisation costs little at 1,000 steps
    assert repr(denoiser) == (
        f"DiffusionDenoiser(sigma=0.5, timestep={denoiser.timestep}, "
        f"alpha_bar={denoiser.alpha_bar:.4f}, noise_level={level:.4f} (2*sigma=1))"
    )


# ---------------------------------------------------------------------------- timestep rule
@pytest.mark.parametrize("sigma", [0.05, 0.12, 0.25, 0.5, 1.0, 2.0, 50.0])
def test_timestep_rule_is_the_closest_alpha_bar(sigma):
    schedule = linear_schedule()
    assert diffusion_timestep(schedule, sigma) == hand_timestep(schedule.tolist(), sigma)


def test_timestep_rule_ends_ties_and_schedule_forms():
    # 1/(1+4 sigma^2) = 0.5 at sigma = 0.5: the first of two equally close entries wins
    assert diffusion_timestep(torch.tensor([0.875, 0.625, 0.375, 0.125]), 0.5) == 1
    assert diffusion_timestep(torch.tensor([0.9, 0.8]), 10.0) == 1  # beyond the end: the last
    assert diffusion_timestep(torch.tensor([0.5, 0.1]), 0.01) == 0  # before the start: the first
    table = linear_schedule()
    expected = diffusion_timestep(table, 0.25)
    assert diffusion_timestep(table.numpy(), 0.25) == expected  # guided-diffusion keeps numpy
    assert diffusion_timestep(types.SimpleNamespace(alphas_cumprod=table), 0.25) == expected
    assert diffusion_timestep(table.float(), 0.25) == expected


@pytest.mark.slow
def test_timestep_of_the_common_schedules():
    diffusers = pytest.importorskip("diffusers")
    linear = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    cosine = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    steps = {s: diffusion_timestep(linear, s) for s in (0.12, 0.25, 0.5, 1.0)}
    assert steps == {0.12: 70, 0.25: 144, 0.5: 258, 1.0: 396}
    # the cosine schedule reaches each noise level later
    assert all(diffusion_timestep(cosine, s) > t for s, t in steps.items())


# ---------------------------------------------------------------------------- diffusers
def tiny_unet(out_channels: int = 1):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("out_channels", [1, 2])
def test_diffusers_unet_and_scheduler_conventions(out_channels):
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet(out_channels)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    denoiser = DiffusionDenoiser(unet, scheduler, sigma=0.25)
    assert list(denoiser.children()) == [unet]  # registered: .to() and eval() reach it
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = denoiser(x)
        # diffusers' own x0 estimate at t*, independently of our formula
        a = scheduler.alphas_cumprod[denoiser.timestep]
        x_t = a.sqrt() * (2 * x - 1)
        eps = unet(x_t, denoiser.timestep).sample[:, :1]
        step = scheduler.step(eps, denoiser.timestep, x_t)
    assert scheduler.config.clip_sample  # diffusers clips x0 to [-1, 1], our clamp to [0, 1]
    assert torch.allclose(out, (step.pred_original_sample + 1) / 2, atol=1e-5)


# ---------------------------------------------------------------------------- DenoisedClassifier
class NearestClean(nn.Module):
    """An oracle denoiser: the nearest of a fixed set of clean images."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images)

    def forward(self, x):
        distances = torch.cdist(x.flatten(1), self.images.flatten(1))
        return self.images[distances.argmin(dim=1)]


@pytest.mark.slow
def test_a_denoiser_returning_the_clean_image_gives_the_clean_accuracy():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 8, 8, generator=g)
    labels = torch.arange(16) % 3
    classifier = TinyLinear()
    with torch.no_grad():
        clean = classifier(images).argmax(1)
    clean_accuracy = (clean == labels).double().mean()
    assert 0.0 < clean_accuracy < 1.0
    model = DenoisedClassifier(NearestClean(images), classifier)
    cert = SmoothedClassifier(model, sigma=0.25, batch_size=500).certify(
        images, n=200, n0=20, alpha=0.001, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(cert.prediction, clean)
    assert certified_accuracy(cert, labels, [0.0]).item() == clean_accuracy
    bare = SmoothedClassifier(classifier, sigma=0.25, batch_size=500).certify(
        images, n=200, n0=20, alpha=0.001, generator=torch.Generator().manual_seed(1)
    )
    assert (bare.radius < cert.radius).any()  # the bare classifier is less sure under noise


def test_resize_and_interpolation():
    captured = []

    class Spy(nn.Module):
        def forward(self, x):
            captured.append(x)
            return x.flatten(1)[:, :3]

    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    out = DenoisedClassifier(nn.Identity(), Spy(), resize=(12, 10))(x)
    expected = nn.functional.interpolate(x, size=(12, 10), mode="bicubic", antialias=True)
    assert torch.equal(captured[-1], expected) and out.shape == (2, 3)
    DenoisedClassifier(nn.Identity(), Spy(), resize=9, interpolation="nearest")(x)
    assert captured[-1].shape == (2, 3, 9, 9)
    DenoisedClassifier(nn.Identity(), Spy())(x)
    assert captured[-1] is x
    model = DenoisedClassifier(nn.Identity(), Spy(), resize=4)
    assert model.resize == (4, 4)
    with pytest.raises(ValueError, match=r"resize=\(4, 4\) needs 4-D images"):
        model(torch.rand(2, 3, 6))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"denoiser": lambda x: x}, TypeError, "denoiser must be a torch.nn.Module, got function"),
        ({"classifier": "f"}, TypeError, "classifier must be a torch.nn.Module, got str"),
        ({"resize": 0}, ValueError, "resize must be a positive integer, got 0"),
        ({"resize": (224, -1)}, ValueError, r"resize must hold positive integers, got \(224, -1\)"),
        ({"resize": 2.5}, TypeError, "resize must be None, an int"),
        ({"resize": True}, TypeError, "resize must be None, an int"),
        ({"resize": "224"}, TypeError, "resize must be None, an int"),
        ({"interpolation": "cubic"}, ValueError, "interpolation must be one of"),
        ({"interpolation": 3}, TypeError, "interpolation must be a str, got int"),
    ],
)
def test_denoised_classifier_errors(kwargs, exc, match):
    arguments = {"denoiser": nn.Identity(), "classifier": nn.Identity(), **kwargs}
    denoiser, classifier = arguments.pop("denoiser"), arguments.pop("classifier")
    with pytest.raises(exc, match=match):
        DenoisedClassifier(denoiser, classifier, **arguments)


@pytest.mark.parametrize(
    ("model", "schedule", "sigma", "exc", "match"),
    [
        ("m", linear_schedule(), 0.25, TypeError, "model must be callable as model"),
        (
            nn.Identity(),
            linear_schedule(),
            0.0,
            ValueError,
            "sigma must be positive and finite, got 0.0",
        ),
        (
            nn.Identity(),
            linear_schedule(),
            "0.5",
            TypeError,
            "sigma must be a real number, got str",
        ),
        (
            nn.Identity(),
            "linear",
            0.25,
            TypeError,
            "schedule must be a 1-D tensor of alphas_cumprod",
        ),
        (nn.Identity(), 0.5, 0.25, TypeError, "schedule must be a 1-D tensor"),
        (
            nn.Identity(),
            torch.ones(2, 3),
            0.25,
            ValueError,
            r"non-empty 1-D table .* shape \(2, 3\)",
        ),
        (nn.Identity(), torch.tensor([]), 0.25, ValueError, "non-empty 1-D table"),
        (nn.Identity(), torch.tensor([0.9, 0.0]), 0.25, ValueError, r"must lie in \(0, 1\]"),
        (nn.Identity(), torch.tensor([1.5, 0.5]), 0.25, ValueError, r"must lie in \(0, 1\]"),
        (
            nn.Identity(),
            torch.tensor([0.9, float("nan")]),
            0.25,
            ValueError,
            r"must lie in \(0, 1\]",
        ),
        (nn.Identity(), [[0.5], [0.2, 0.1]], 0.25, TypeError, "alphas_cumprod must be numbers"),
    ],
)
def test_diffusion_denoiser_errors(model, schedule, sigma, exc, match):
    with pytest.raises(exc, match=match):
        DiffusionDenoiser(model, schedule, sigma=sigma)


@pytest.mark.parametrize(
    ("output", "exc", "match"),
    [
        (
            lambda x: (x,),
            TypeError,
            "must return the predicted noise as a tensor or as an object with a .sample",
        ),
        (lambda x: {"sample": x}, TypeError, "got dict"),
        (
            lambda x: x[:, :1],
            ValueError,
            r"returned shape \(2, 1, 4, 4\) for inputs of shape \(2, 3, 4, 4\)",
        ),
        (lambda x: x[..., :2], ValueError, "expected the inputs' shape, or twice their channels"),
    ],
)
def test_diffusion_denoiser_output_errors(output, exc, match):
    denoiser = DiffusionDenoiser(lambda x, t: output(x), linear_schedule(), sigma=0.25)
    with pytest.raises(exc, match=match):
        denoiser(torch.rand(2, 3, 4, 4))


# ---------------------------------------------------------------------------- composition
def composed_by_hand() -> nn.Module:
    denoised = denoised_tiny_model()

    class ByHand(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = denoised

        def forward(self, x):
            d = self.parts.denoiser
            a = d.alpha_bar
            x_t = math.sqrt(a) * (2 * x - 1)
            eps = d.model(x_t, torch.full((len(x),), d.timestep))
            x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
            return self.parts.classifier(((x0 + 1) / 2).clamp(0, 1))

    return ByHand()


@pytest.mark.slow
def test_composition_under_certify_and_certify_radius():
    x = tiny_dataset()[:6][0]
    results = []
    for model in (denoised_tiny_model(), composed_by_hand()):
        smoothed = SmoothedClassifier(model, sigma=0.25, batch_size=128)
        cert = smoothed.certify(
            x, n=200, n0=20, alpha=0.001, generator=torch.Generator().manual_seed(5)
        )
        grid = smoothed.certify_radius(
            x, [0.1, 0.3], max_n=400, generator=torch.Generator().manual_seed(5)
        )
        results.append((cert, grid))
    (cert, grid), (cert_hand, grid_hand) = results
    assert torch.equal(cert.prediction, cert_hand.prediction)
    assert torch.equal(cert.radius, cert_hand.radius)
    assert (cert.prediction >= 0).any()
    for name in ("prediction", "certified", "samples"):
        if hasattr(grid, name):
            assert torch.equal(getattr(grid, name), getattr(grid_hand, name)), name


@pytest.mark.slow
def test_composition_under_certify_dataset_and_the_command_line(tmp_path, capsys):
    out = tmp_path / "python.tsv"
    smoothed = SmoothedClassifier(denoised_tiny_model(), sigma=0.25, batch_size=200)
    certify_dataset(smoothed, tiny_dataset(), out, progress=False, procedure=CERTIFY)
    expected = rows(out)
    by_hand = tmp_path / "hand.tsv"
    smoothed = SmoothedClassifier(composed_by_hand(), sigma=0.25, batch_size=200)
    certify_dataset(smoothed, tiny_dataset(), by_hand, progress=False, procedure=CERTIFY)
    assert rows(by_hand) == expected
    assert len(expected) == 24 and any(row[2] != "-1" for row in expected)

    cli = tmp_path / "cli.tsv"
    code = main([
        "certify", "--model", "denoised_helpers:denoised_tiny_model", "--factory-loads-weights",
        "--dataset", "runner_helpers:tiny_dataset", "--sigma", "0.25", "--n", "200", "--n0", "20",
        "--alpha", "0.001", "--batch-size", "200", "--out", str(cli), "--no-progress",
    ])  # fmt: skip
    capsys.readouterr()
    assert code == 0
    assert rows(cli) == expected


# ---------------------------------------------------------------------------- criteria
def small_denoiser(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1)
    ).to(dtype)


def small_classifier(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
    ).to(dtype)  # fmt: skip


def batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 1, 6, 6, generator=g, dtype=dtype)
    noise = 0.25 * torch.randn(x.shape, generator=g, dtype=dtype)
    return x, torch.arange(6) % 5, noise


def grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def test_mse_loss_matches_a_plain_loop_in_value_and_gradient():
    x, _, noise = batch()
    denoiser = small_denoiser()
    loss = denoiser_mse_loss(denoiser, x, noise)
    loss.backward()
    got = grads(denoiser)
    denoiser.zero_grad()
    total, count = 0.0, 0
    for j in range(len(x)):  # one image at a time, entry by entry
        out = denoiser(x[j : j + 1] + noise[j : j + 1])
        for entry, target in zip(out.flatten(), x[j].flatten(), strict=True):
            total = total + (entry - target) ** 2
            count += 1
    reference = total / count
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for g1, g2 in zip(got, grads(denoiser), strict=True):
        assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-12)


def test_stability_loss_matches_a_plain_loop_in_value_and_gradient():
    x, _, noise = batch()
    denoiser, classifier = small_denoiser(), small_classifier().eval()
    loss = denoiser_stability_loss(denoiser, classifier, x, noise)
    loss.backward()
    got = grads(denoiser)
    denoiser.zero_grad()
    classifier.zero_grad()
    total = 0.0
    for j in range(len(x)):
        with torch.no_grad():
            label = int(classifier(x[j : j + 1])[0].argmax())
        logits = classifier(denoiser(x[j : j + 1] + noise[j : j + 1]))[0]
        total = total - (logits[label] - torch.logsumexp(logits, 0))
    reference = total / len(x)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for g1, g2 in zip(got, grads(denoiser), strict=True):
        assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-12)
    # the targets are the classifier's clean predictions, not the labels
    predictions = classifier(x).argmax(1)
    assert loss.item() == pytest.approx(
        nn.functional.cross_entropy(classifier(denoiser(x + noise)), predictions).item()
    )


def test_gradcheck_of_the_pure_forms():
    x, _, noise = batch()
    x, noise = x[:2], noise[:2]
    denoiser, classifier = small_denoiser(), small_classifier().eval()
    weight = denoiser[2].weight.detach().clone().requires_grad_(True)

    def with_weight(w):
        return lambda z: torch.func.functional_call(denoiser, {"2.weight": w}, (z,))

    assert torch.autograd.gradcheck(
        lambda z: denoiser_mse_loss(denoiser, z, noise), (x.clone().requires_grad_(True),)
    )
    assert torch.autograd.gradcheck(
        lambda w: denoiser_mse_loss(with_weight(w), x, noise), (weight,)
    )
    assert torch.autograd.gradcheck(
        lambda w: denoiser_stability_loss(with_weight(w), classifier, x, noise), (weight,)
    )


def test_modules_match_the_pure_forms_on_the_same_noise():
    x, y, _ = batch(torch.float32)
    denoiser, classifier = small_denoiser(torch.float32), small_classifier(torch.float32).eval()
    noise = sample_noise(x, 0.5, 1, generator=torch.Generator().manual_seed(9))
    mse = DenoiserMSELoss(0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(mse(denoiser, x, y), denoiser_mse_loss(denoiser, x, noise))
    assert mse.last_terms == {"mse": denoiser_mse_loss(denoiser, x, noise).item()}
    stab = DenoiserStabilityLoss(0.5, classifier, generator=torch.Generator().manual_seed(9))
    expected = denoiser_stability_loss(denoiser, classifier, x, noise)
    assert torch.equal(stab(denoiser, x, y), expected)
    assert stab.last_terms == {"stability": expected.item()}


def classifier_state(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def test_the_stability_classifier_is_frozen_in_eval_mode_and_left_as_found():
    x, y, _ = batch(torch.float32)
    denoiser = small_denoiser(torch.float32).train()
    classifier = small_classifier(torch.float32).train()  # BatchNorm and Dropout in train mode
    classifier[0].bias.requires_grad_(False)  # a mixed set of flags
    classifier[1].eval()
    before = classifier_state(classifier)
    criterion = DenoiserStabilityLoss(0.25, classifier, generator=torch.Generator().manual_seed(0))
    loss = criterion(denoiser, x, y)
    loss.backward()
    after = classifier_state(classifier)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(grad is None for grad in after[2])  # no gradient accumulated in the classifier
    assert all(torch.equal(before[3][k], after[3][k]) for k in before[3])  # BN stats untouched
    assert all(p.grad is not None for p in denoiser.parameters())
    # it ran in eval mode (deterministic Dropout, running BatchNorm statistics)
    noise = sample_noise(x, 0.25, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = denoiser_stability_loss(denoiser, classifier.eval(), x, noise)
    classifier.train()
    classifier[1].eval()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_the_classifier_is_restored_when_the_call_raises():
    x, y, _ = batch(torch.float32)
    classifier = small_classifier(torch.float32).train()
    before = classifier_state(classifier)

    class Failing(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    criterion = DenoiserStabilityLoss(0.25, classifier)
    with pytest.raises(RuntimeError, match="boom"):
        criterion(Failing(), x, y)
    after = classifier_state(classifier)
    assert after[:3] == before[:3]
    assert criterion.last_terms == {}


def test_the_classifier_is_not_a_submodule_of_the_criterion():
    classifier = small_classifier(torch.float32)
    criterion = DenoiserStabilityLoss(0.25, classifier)
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    assert criterion.classifier is classifier
    other = nn.Linear(36, 5)
    criterion.classifier = other
    assert criterion.classifier is other and list(criterion.parameters()) == []
    with pytest.raises(TypeError, match="classifier must be a torch.nn.Module, got str"):
        criterion.classifier = "f"
    with pytest.raises(AttributeError, match="did you mean 'sigma'"):
        criterion.sigmma = 0.5


@pytest.mark.parametrize("kind", ["mse", "stability"])
def test_the_denoiser_is_left_as_found_and_trained_in_its_mode(kind):
    x, y, _ = batch(torch.float32)
    denoiser = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Conv2d(2, 1, 3, padding=1)
    )
    denoiser[2].bias.requires_grad_(False)
    criterion = (
        DenoiserMSELoss(0.25)
        if kind == "mse"
        else DenoiserStabilityLoss(0.25, small_classifier(torch.float32))
    )
    modes = [m.training for m in denoiser.modules()]
    flags = [p.requires_grad for p in denoiser.parameters()]
    criterion(denoiser, x, y).backward()
    assert int(denoiser[1].num_batches_tracked) == 1  # train mode: batch statistics
    assert [m.training for m in denoiser.modules()] == modes
    assert [p.requires_grad for p in denoiser.parameters()] == flags
    denoiser.eval()
    with pytest.warns(UserWarning, match=r"eval\(\) mode"):
        criterion(denoiser, x, y)


@pytest.mark.parametrize("kind", ["mse", "stability"])
def test_criteria_reproducible_and_shape_agnostic(kind):
    def make(seed, classifier):
        g = torch.Generator().manual_seed(seed)
        if kind == "mse":
            return DenoiserMSELoss(0.25, generator=g)
        return DenoiserStabilityLoss(0.25, classifier, generator=g)

    for shape, denoiser, classifier in [
        ((5, 1, 6, 6), small_denoiser(torch.float32), small_classifier(torch.float32)),
        ((5, 4), nn.Linear(4, 4), nn.Linear(4, 3)),
    ]:
        x, y = torch.rand(shape), torch.arange(5) % 3
        loss = make(0, classifier)(denoiser, x, y)
        assert loss.shape == () and torch.isfinite(loss)
        assert torch.equal(loss, make(0, classifier)(denoiser, x, y))
        assert not torch.equal(loss, make(1, classifier)(denoiser, x, y))


def test_criteria_repr_and_terms():
    assert repr(DenoiserMSELoss(0.5)) == "DenoiserMSELoss(sigma=0.5)"
    assert repr(DenoiserStabilityLoss(0.25, nn.Linear(2, 2))) == (
        "DenoiserStabilityLoss(sigma=0.25, classifier=Linear)"
    )
    assert DenoiserMSELoss.term_names == ("mse",)
    assert DenoiserStabilityLoss.term_names == ("stability",)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: DenoiserMSELoss(0.0), ValueError, "sigma must be positive and finite, got 0.0"),
        (lambda: DenoiserMSELoss(-1), ValueError, "sigma must be positive and finite, got -1.0"),
        (lambda: DenoiserMSELoss(None), TypeError, "sigma must be a real number, got NoneType"),
        (
            lambda: DenoiserMSELoss(0.5, generator=1),
            TypeError,
            "generator must be a torch.Generator, got int",
        ),
        (
            lambda: DenoiserMSELoss(0.5, input_range=(1, 0)),
            ValueError,
            "input_range must be a pair",
        ),
        (
            lambda: DenoiserStabilityLoss(0.5, "f"),
            TypeError,
            "classifier must be a torch.nn.Module, got str",
        ),
        (
            lambda: DenoiserStabilityLoss(float("nan"), nn.Linear(2, 2)),
            ValueError,
            "sigma must be positive",
        ),
        (lambda: DenoiserStabilityLoss(0.5), TypeError, "classifier"),
    ],
)
def test_criteria_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda c: c(nn.Identity(), torch.rand(2, 4) * 255, torch.tensor([0, 1])),
            ValueError,
            "inputs",
        ),
        (lambda c: c(nn.Identity(), torch.rand(2, 4), torch.tensor([0])), ValueError, "targets"),
        (
            lambda c: c("denoiser", torch.rand(2, 4), torch.tensor([0, 1])),
            TypeError,
            "model must be a torch.nn.Module",
        ),
        (
            lambda c: c(nn.Linear(4, 3), torch.rand(2, 4), torch.tensor([0, 1])),
            ValueError,
            r"the denoiser returned shape \(2, 3\)",
        ),
        (
            lambda c: c(Tupled(), torch.rand(2, 4), torch.tensor([0, 1])),
            TypeError,
            r"the model must return a tensor \(the denoised inputs\), got tuple",
        ),
    ],
)
def test_criteria_call_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(DenoiserMSELoss(0.25))


class Tupled(nn.Module):
    def forward(self, x):
        return (x,)


def test_functional_errors():
    x = torch.rand(2, 4)
    with pytest.raises(ValueError, match="noise must have the shape of inputs"):
        denoiser_mse_loss(nn.Identity(), x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="noise must have the shape of inputs"):
        denoiser_stability_loss(nn.Identity(), nn.Linear(4, 2), x, torch.zeros(2, 5))
    with pytest.raises(TypeError, match="denoiser must return a tensor, got tuple"):
        denoiser_stability_loss(lambda z: (z,), nn.Linear(4, 2), x, torch.zeros(2, 4))
