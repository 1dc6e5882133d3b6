"""The how-to "Certify a pretrained classifier with a denoiser" runs, with small random models.

Each ``code-block:: python`` of ``docs/howto/denoised.rst`` is executed as written. Nothing is
downloaded: ``from_pretrained`` returns a small randomly initialised model of the same diffusers
class, and the checkpoint loaders return random models of the same architecture. OpenAI's
guided-diffusion is not on PyPI and timm cannot be installed next to this CPU build of torch (its
torchvision dependency does not load), so the ImageNet block runs against small stand-ins with
their calling conventions: ``create_model_and_diffusion`` returns a diffusers ``UNet2DModel``
that predicts 6 channels for 3 (learned variance) and an object whose ``alphas_cumprod`` is a
numpy array, as guided-diffusion's ``GaussianDiffusion`` has.
"""

from __future__ import annotations

import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rsmooth.models
from rsmooth import SmoothedClassifier
from rsmooth.denoised import diffusion_timestep

HOWTO = Path(__file__).resolve().parents[1] / "docs" / "howto" / "denoised.rst"


def blocks() -> list[str]:
    text = HOWTO.read_text()
    found = re.findall(r"\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", text)
    return [re.sub(r"^ {4}", "", block, flags=re.M) for block in found]


def test_the_page_has_the_three_snippets():
    assert len(blocks()) == 3


@pytest.fixture
def small_certify(monkeypatch):
    """SmoothedClassifier.certify with at most 30 samples (the snippets ask for 10,000)."""
    original = SmoothedClassifier.certify
    calls = []

    def certify(self, inputs, *, n=100_000, n0=100, **kwargs):
        cert = original(self, inputs, n=min(n, 30), n0=min(n0, 5), **kwargs)
        calls.append(cert)
        return cert

    monkeypatch.setattr(SmoothedClassifier, "certify", certify)
    return calls


def small_unet(diffusers, size: int, channels: int, out_channels: int):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=out_channels,
        block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip


@pytest.mark.slow
def test_cifar10_snippet(monkeypatch, small_certify):
    diffusers = pytest.importorskip("diffusers")
    loaded = []

    def unet_from_pretrained(name, **kwargs):
        loaded.append(name)
        return small_unet(diffusers, 32, 3, 3)

    def scheduler_from_pretrained(name, **kwargs):
        loaded.append(name)  # google/ddpm-cifar10-32's schedule: linear, 1,000 steps
        return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", unet_from_pretrained)
    monkeypatch.setattr(diffusers.DDPMScheduler, "from_pretrained", scheduler_from_pretrained)
    monkeypatch.setattr(
        rsmooth.models,
        "load_research_checkpoint",
        lambda path, *a, **k: rsmooth.models.get_model("cifar_resnet20", "cifar10").eval(),
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    namespace = {"images": images}
    exec(blocks()[0], namespace)
    assert loaded == ["google/ddpm-cifar10-32"] * 2
    assert namespace["denoiser"].timestep == 144
    cert = namespace["cert"]
    assert cert.prediction.shape == (2,) and small_certify


@pytest.mark.slow
def test_imagenet_snippet(monkeypatch, small_certify):
    diffusers = pytest.importorskip("diffusers")
    numpy = pytest.importorskip("numpy")
    betas = numpy.linspace(1e-4, 0.02, 1000, dtype=numpy.float64)  # guided-diffusion's "linear"
    unet = small_unet(diffusers, 16, 3, 6)  # learned variance: 6 channels for 3

    def create_model_and_diffusion(**options):
        assert options["learn_sigma"] and options["image_size"] == 256
        return unet, types.SimpleNamespace(alphas_cumprod=numpy.cumprod(1.0 - betas))

    script_util = types.ModuleType("guided_diffusion.script_util")
    script_util.model_and_diffusion_defaults = lambda: {"image_size": 64, "learn_sigma": False}
    script_util.create_model_and_diffusion = create_model_and_diffusion
    guided = types.ModuleType("guided_diffusion")
    guided.script_util = script_util

    def create_model(name, pretrained=False, **kwargs):
        assert name == "beit_large_patch16_512" and pretrained
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10))  # fmt: skip

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.data = types.SimpleNamespace(
        resolve_data_config=lambda args, model: {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    )
    monkeypatch.setitem(sys.modules, "guided_diffusion", guided)
    monkeypatch.setitem(sys.modules, "guided_diffusion.script_util", script_util)
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setattr(torch, "load", lambda path, **kwargs: unet.state_dict())

    namespace: dict = {}
    exec(blocks()[1], namespace)
    model, smoothed = namespace["model"], namespace["smoothed"]
    assert model.resize == (512, 512)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seen = []
    model.classifier.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    assert seen == [(2, 3, 512, 512)]
    assert namespace["denoiser"].timestep == 258
    assert smoothed.sigma == 0.5


@pytest.mark.slow
def test_training_snippet():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    data = TensorDataset(torch.rand(16, 1, 8, 8), torch.arange(16) % 10)
    namespace = {"classifier": classifier, "loader": DataLoader(data, batch_size=8)}
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    exec(blocks()[2], namespace)
    model = namespace["model"]
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())


def cosine_schedule(steps: int, s: float = 0.008) -> torch.Tensor:
    """improved-diffusion's cosine schedule (betas capped at 0.999), in float64."""

    def f(t: float) -> float:
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


def linear_schedule(steps: int) -> torch.Tensor:
    scale = 1000 / steps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def test_the_timestep_table_is_computed():
    text = HOWTO.read_text()
    schedules = {
        "linear, 1,000 steps": linear_schedule(1000),
        "cosine, 1,000 steps": cosine_schedule(1000),
        "cosine, 4,000 steps": cosine_schedule(4000),
    }
    for name, table in schedules.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(f'"{name}"'))
        cells = line.rsplit('",', 1)[1].split(",")
        expected = []
        for sigma in (0.12, 0.25, 0.5, 1.0):
            t = diffusion_timestep(table, sigma)
            a = float(table[t])
            expected.append(f"{t} ({math.sqrt((1 - a) / a):.4f})")
            assert abs(math.sqrt((1 - a) / a) - 2 * sigma) < 0.01 * 2 * sigma  # "under 1%"
        assert cells == expected, name
