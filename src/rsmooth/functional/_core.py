"""Shared building blocks of the functional core: replication, noise, the soft smoothed classifier.

Replication order (used everywhere in rsmooth) is **noise-major**: for a batch ``x`` of ``B``
inputs and ``m`` noise copies, row ``i * B + j`` of a replicated tensor is copy ``i`` of input
``j``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "expand_rows",
    "logits_of",
    "match_memory_format",
    "normal_icdf",
    "num_copies",
    "replicate",
    "row_norms",
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
        Tensor ``[m * B, *]`` whose row ``i * B + j`` is ``inputs[j]``, in the memory format of
        ``inputs`` (a ``channels_last`` batch stays ``channels_last``).

    Example:
        >>> replicate(torch.tensor([[1.0], [2.0]]), 3).flatten().tolist()
        [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
    """
    return match_memory_format(inputs.repeat((num_noise,) + (1,) * (inputs.dim() - 1)), inputs)


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

    The noise is drawn on ``inputs.device`` in ``inputs.dtype`` and returned in the memory format
    of ``inputs`` (``channels_last`` stays ``channels_last``). The values do not depend on the
    memory format: they are drawn in the standard layout and then laid out like ``inputs``.

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
    return match_memory_format(noise.mul_(sigma), inputs)


def match_memory_format(values: Tensor, like: Tensor) -> Tensor:
    """Lay ``values`` out in ``like``'s channels-last format when ``like`` uses one."""
    if like.is_contiguous():  # also true for 4-D tensors with C = 1 or H = W = 1
        return values
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return values.contiguous(memory_format=torch.channels_last)
    if like.dim() == 5 and like.is_contiguous(memory_format=torch.channels_last_3d):
        return values.contiguous(memory_format=torch.channels_last_3d)
    return values


def logits_of(model: nn.Module, batch: Tensor) -> Tensor:
    r"""``model(batch)``, with reduced-precision logits upcast to float32 for the loss maths.

    Under :func:`torch.autocast` (or with a float16/bfloat16 model) the logits come out in a
    16-bit type. The softmax normalisations, logs, KL terms and :math:`\Phi^{-1}` that follow
    need float32: the constants ``1e-10`` and ``1e-20`` underflow to zero in float16, and
    bfloat16 keeps only 8 significant bits. float32 and float64 logits are returned unchanged.
    """
    logits = model(batch)
    if isinstance(logits, Tensor) and logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


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
    logits = logits_of(model, replicate(inputs, num_noise) + noise)
    return split_copies(logits.softmax(dim=1), num_noise).mean(dim=0)


def num_copies(inputs: Tensor, noise: Tensor) -> int:
    """Return ``m`` for noise ``[m * B, *]`` matching ``inputs`` ``[B, *]``, or raise."""
    if not isinstance(noise, Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    batch = inputs.shape[0]
    if (
        noise.dim() != inputs.dim()
        or noise.shape[1:] != inputs.shape[1:]
        or noise.shape[0] == 0
        or noise.shape[0] % batch
    ):
        raise ValueError(
            f"noise must have shape [m * {batch}, *{tuple(inputs.shape[1:])}] for inputs of shape "
            f"{tuple(inputs.shape)}, got {tuple(noise.shape)}"
        )
    return noise.shape[0] // batch


def normal_icdf(p: Tensor) -> Tensor:
    # The standard normal quantile exactly as torch.distributions.Normal(0, 1).icdf computes it
    # (the form the MACER code uses): +-inf at p = 1 and p = 0.
    return torch.erfinv(2 * p - 1) * math.sqrt(2)


def expand_rows(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-example values ``[B]`` to broadcast against ``like`` ``[B, *]``."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def row_norms(values: Tensor) -> Tensor:
    """Per-example L2 norms ``[B]`` of ``values`` ``[B, *]``, accumulated in at least float32."""
    dtype = torch.promote_types(values.dtype, torch.float32)
    norms = torch.linalg.vector_norm(values.flatten(1), ord=2, dim=1, dtype=dtype)
    return norms.to(values.dtype)
