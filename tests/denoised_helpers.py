"""Factories for the denoised-smoothing tests (importable as module:factory by the CLI)."""

from __future__ import annotations

import torch
from runner_helpers import TinyLinear
from torch import nn

from rsmooth.denoised import DenoisedClassifier, DiffusionDenoiser


class LinearNoisePredictor(nn.Module):
    """A fixed, deterministic "noise predictor": eps = a * x_t + b (per channel), for any shape."""

    def __init__(self, channels: int = 1, *, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        g = torch.Generator().manual_seed(3)
        self.a = nn.Parameter(0.5 * torch.randn(out_channels, generator=g))
        self.b = nn.Parameter(0.1 * torch.randn(out_channels, generator=g))
        self.channels = channels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        shape = (1, -1) + (1,) * (x_t.dim() - 2)
        repeats = self.a.numel() // self.channels
        base = x_t.repeat(1, repeats, *([1] * (x_t.dim() - 2)))
        return self.a.view(shape) * base + self.b.view(shape)


def linear_schedule(steps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def denoised_tiny_model(sigma: float = 0.25) -> nn.Module:
    """TinyLinear (runner_helpers) behind a one-shot diffusion denoiser."""
    denoiser = DiffusionDenoiser(LinearNoisePredictor(), linear_schedule(), sigma=sigma)
    return DenoisedClassifier(denoiser, TinyLinear())
