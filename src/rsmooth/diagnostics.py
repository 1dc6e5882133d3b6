"""Diagnostics: how much a speed-up changes the base classifier a certificate is about.

Under ``autocast`` (bfloat16 or float16) the forward passes run in reduced precision, and the
smoothed classifier that CERTIFY certifies is the one whose base classifier is the model *under
autocast*. The certificate is sound for that classifier; whether it also speaks for the float32
model depends on how often the two disagree on noisy inputs. :func:`autocast_disagreement`
measures exactly that, on the noisy samples a certification run draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rsmooth._engine.batching import policy
from rsmooth._engine.forward import ForwardRunner
from rsmooth._engine.streams import NoiseSource, Stream, input_seeds
from rsmooth._model_state import preserve_model_state
from rsmooth._validation import check_generator, check_inputs, check_int
from rsmooth.smoothing import SmoothedClassifier

__all__ = ["autocast_disagreement"]


def autocast_disagreement(
    smoothed: SmoothedClassifier,
    inputs: Tensor,
    *,
    num: int = 1000,
    dtype: torch.dtype = torch.bfloat16,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The share of noisy samples on which the model's vote under ``autocast`` differs from float32.

    The samples are the first ``num`` estimation samples of each input, the ones
    :meth:`~rsmooth.SmoothedClassifier.certify` counts with the same ``generator``; each one goes
    through the model twice, under :func:`torch.autocast` with ``dtype`` and in the inputs' own
    precision, in the classifier's layout. A sample whose logits are finite in one precision only
    counts as a disagreement.

    A certificate computed with ``autocast=dtype`` is about the smoothed reduced-precision model;
    a disagreement rate :math:`d` bounds how far the two smoothed classifiers' vote shares can
    be apart (by at most :math:`d` in expectation), so a :math:`d` well below the margin between
    ``p_lower`` and 1/2 means the float32 model's certificate would be the same.

    Args:
        smoothed: The smoothed classifier (its model, ``sigma`` and ``memory_format``).
        inputs: Batch ``[B, *]``.
        num: Noisy samples per input. Default: 1,000.
        dtype: ``torch.bfloat16`` or ``torch.float16``. Default: ``torch.bfloat16``.
        generator: Optional ``torch.Generator`` on the inputs' device, as given to ``certify``.

    Returns:
        ``float64`` tensor ``[B]``: the share of each input's samples whose votes differ.

    Example:
        >>> from torch import nn
        >>> smoothed = SmoothedClassifier(nn.Linear(4, 3), 0.25)
        >>> g = torch.Generator().manual_seed(0)
        >>> share = autocast_disagreement(smoothed, torch.rand(2, 4, generator=g), num=200)
        >>> share.shape, bool((share >= 0).all() and (share <= 0.05).all())
        (torch.Size([2]), True)
    """
    if not isinstance(smoothed, SmoothedClassifier):
        raise TypeError(f"smoothed must be a SmoothedClassifier, got {type(smoothed).__name__}")
    inputs = check_inputs("inputs", inputs)
    num = check_int("num", num)
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    seeds = input_seeds(inputs.shape[0], check_generator(generator, inputs.device))
    classes, memory_format = smoothed.num_classes, smoothed.memory_format
    full = ForwardRunner(smoothed.model, num_classes=classes, memory_format=memory_format)
    reduced = ForwardRunner(
        smoothed.model, num_classes=classes, memory_format=memory_format, autocast=dtype
    )
    reduced.check_device(inputs.device)
    layout = full.layout(inputs)
    size = policy(smoothed.batch_size, inputs).target()
    noise = NoiseSource(tuple(inputs.shape[1:]), inputs.dtype, inputs.device, smoothed.sigma)
    shares = torch.zeros(inputs.shape[0], dtype=torch.float64)
    with preserve_model_state(smoothed.model, train=False), torch.inference_mode():
        for j, seed in enumerate(seeds):
            differ = 0
            for start in range(0, num, size):
                stop = min(num, start + size)
                batch = torch.empty(
                    (stop - start, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device,
                    memory_format=torch.contiguous_format if layout is None else layout,
                )  # fmt: skip
                noise.fill(batch, 0, inputs[j], seed, Stream.ESTIMATION, start, stop)
                a, b = full.logits(batch, inputs), reduced.logits(batch, inputs)
                finite_a, finite_b = torch.isfinite(a).all(1), torch.isfinite(b).all(1)
                same = (finite_a == finite_b) & (~finite_a | (a.argmax(1) == b.argmax(1)))
                differ += int((~same).sum())
            shares[j] = differ / num
    return shares
