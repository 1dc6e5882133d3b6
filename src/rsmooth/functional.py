r"""Deterministic building blocks shared by the certifier, the training criteria and the attacks.

Every function here takes its noise **as an argument**, so results can be checked exactly and
differentiated with :func:`torch.autograd.gradcheck`; the modules draw the noise with
:func:`sample_noise` and delegate.

Replication order (used everywhere in rsmooth) is **noise-major**: for a batch ``x`` of ``B``
inputs and ``m`` noise copies, row ``i * B + j`` of a replicated tensor is copy ``i`` of input
``j``. :func:`replicate` builds it, :func:`sample_noise` draws noise of that shape and
:func:`split_copies` reshapes per-row outputs to ``[m, B, ...]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "replicate",
    "sample_noise",
    "soft_smoothed_probs",
    "split_copies",
]


def replicate(inputs: Tensor, num_noise: int) -> Tensor:
    """Repeat a batch ``num_noise`` times, noise-major.

    Args:
        inputs: Batch ``[B, *]``.
        num_noise: Number of copies ``m``.

    Returns:
        Tensor ``[m * B, *]`` whose row ``i * B + j`` is ``inputs[j]``.

    Example:
        >>> replicate(torch.tensor([[1.0], [2.0]]), 3).flatten().tolist()
        [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
    """
    return inputs.repeat((num_noise,) + (1,) * (inputs.dim() - 1))


def split_copies(values: Tensor, num_noise: int) -> Tensor:
    """Reshape per-row values ``[m * B, *]`` (noise-major) to ``[m, B, *]``.

    Example:
        >>> split_copies(torch.arange(6), 3).tolist()
        [[0, 1], [2, 3], [4, 5]]
    """
    return values.reshape((num_noise, -1) + tuple(values.shape[1:]))


def sample_noise(
    inputs: Tensor,
    sigma: float,
    num_noise: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Draw isotropic Gaussian noise :math:`\delta \sim \mathcal{N}(0, \sigma^2 I)` for ``m`` copies.

    The noise is drawn on ``inputs.device`` in ``inputs.dtype``.

    Args:
        inputs: Batch ``[B, *]`` (only its shape, device and dtype are used).
        sigma: Noise standard deviation :math:`\sigma`.
        num_noise: Number of copies ``m``.
        generator: Optional generator on ``inputs.device``.

    Returns:
        Noise ``[m * B, *]`` in noise-major order (see :func:`replicate`).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_noise(torch.zeros(4, 3, 8, 8), 0.5, 2, generator=g).shape
        torch.Size([8, 3, 8, 8])
    """
    shape = (num_noise * inputs.shape[0],) + tuple(inputs.shape[1:])
    noise = torch.randn(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
    return noise.mul_(sigma)


def soft_smoothed_probs(model: nn.Module, inputs: Tensor, noise: Tensor) -> Tensor:
    r"""The soft smoothed classifier :math:`\hat F(x) = \frac{1}{m}\sum_i \mathrm{softmax}(f(x + \delta_i))`.

    One forward pass over the ``m * B`` noisy copies; differentiable in ``inputs``, ``noise``
    and the model's parameters. The model's mode is used as it is.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Batch ``[B, *]``.
        noise: Noise ``[m * B, *]`` in noise-major order, already scaled by :math:`\sigma`.

    Returns:
        Probabilities ``[B, K]``.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.rand(2, 4)
        >>> p = soft_smoothed_probs(model, x, torch.zeros(6, 4))
        >>> p.shape, bool(torch.allclose(p.sum(1), torch.ones(2)))
        (torch.Size([2, 3]), True)
    """
    num_noise = noise.shape[0] // inputs.shape[0]
    logits = model(replicate(inputs, num_noise) + noise)
    return split_copies(logits.softmax(dim=1), num_noise).mean(dim=0)
