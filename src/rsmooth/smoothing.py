r"""The smoothed classifier: Monte-Carlo sampling engine, PREDICT and CERTIFY.

Given a base classifier :math:`f` and a noise level :math:`\sigma`, the smoothed classifier is

.. math:: g(x) = \arg\max_c \; \mathbb{P}_{\delta \sim \mathcal{N}(0, \sigma^2 I)}\big(f(x + \delta) = c\big).

:meth:`SmoothedClassifier.certify` implements CERTIFY and :meth:`SmoothedClassifier.predict`
implements PREDICT of :cite:`cohen2019certified`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from rsmooth._autobatch import AutoBatch
from rsmooth._folding import FoldedCopy, Unfoldable, count_batchnorms, fold_batchnorm, has_hooks
from rsmooth._model_state import preserve_model_state
from rsmooth._seeding import mix
from rsmooth._validation import (
    DEFAULT_INPUT_RANGE,
    check_generator,
    check_input_range,
    check_input_range_arg,
    check_inputs,
    check_int,
    check_model,
    check_open_unit,
    check_positive,
)
from rsmooth.functional import sample_noise, soft_smoothed_probs
from rsmooth.stats import (
    binomial_pvalue,
    certified_radius,
    clopper_pearson_lower,
    max_certified_radius,
    min_samples_to_certify,
    min_samples_to_predict,
    randomized_clopper_pearson_lower,
)

if TYPE_CHECKING:
    from rsmooth.sequential import RadiusCertificate

__all__ = ["ABSTAIN", "Certificate", "SampleSizeWarning", "SmoothedClassifier"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
NonFinitePolicy = Literal["raise", "count_against"]
BatchSize = int | Literal["auto"]
MemoryFormat = Literal["auto", "preserve", "channels_last"]
FoldBatchNorm = bool | Literal["auto"]
_AutoKey = tuple[tuple[int, ...], torch.dtype, str]

#: Independent noise streams of every input: CERTIFY selects its candidate on SELECTION samples,
#: estimates on ESTIMATION samples (PREDICT too), and draws any uniform variates from AUXILIARY.
SELECTION, ESTIMATION, AUXILIARY = 0, 1, 2

_SEED_HIGH = 2**63 - 1
#: A noise block holds about this many elements: BLOCK = clamp(elements // numel, 1, max_block),
#: per device type. On the CPU drawing noise costs about as much as a small model's forward pass, so
#: blocks stay small (little noise drawn past the end of a range); on an accelerator each block costs
#: a few kernel launches from Python and the noise itself is nearly free, so blocks are large.
_BLOCK_ELEMENTS = {"cpu": 2**16}
_MAX_BLOCK = {"cpu": 512}
_BLOCK_ELEMENTS_ACCELERATOR = 2**20
_MAX_BLOCK_ACCELERATOR = 4096
_NONFINITE_POLICIES = ("raise", "count_against")
_MEMORY_FORMATS = ("auto", "preserve", "channels_last")
#: memory_format="auto" and fold_batchnorm: rows of the inputs the checks run the model on (both
#: layouts; the model and its folded copy), and how far apart the two logit rows may be (relative
#: to the largest logit; a model that reads raw memory, or a copy traced wrongly, gets a different
#: answer, not a rounding difference)
_CHECK_ROWS = 32
_CHECK_RTOL = {torch.float64: 1e-6, torch.float32: 1e-3}
#: float16, bfloat16 and autocast: bfloat16 rounds each op by up to 2**-8, which adds up over a
#: deep network's layers differently in each layout; reading pixels in the wrong order changes
#: logits by a large fraction of their size
_CHECK_RTOL_REDUCED = 0.1
_AUTO_MAX_CPU_BYTES = 2**28  # largest automatic forward batch of inputs on the CPU (256 MiB)
_clock = time.perf_counter  # times the batch-size search's batches (tests drive a fake clock)
_OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

#: Label returned by :meth:`SmoothedClassifier.predict` and :meth:`SmoothedClassifier.certify`
#: when the smoothed classifier abstains.
ABSTAIN: int = -1


class SampleSizeWarning(UserWarning):
    """Warns that a sample size is too small for PREDICT or CERTIFY to ever return a class."""


@dataclass(frozen=True, eq=False, slots=True)
class Certificate:
    """The result of :meth:`SmoothedClassifier.certify` for a batch of ``B`` inputs.

    All tensors have shape ``[B]`` and live on the inputs' device.

    Attributes:
        prediction: Certified class per input (``int64``), :data:`ABSTAIN` (-1) where it abstains.
        radius: Certified L2 radius per input (``float64``); 0.0 where it abstains.
        p_lower: One-sided Clopper–Pearson lower bound on the selected class's probability.
        count: Number of the ``n`` estimation samples that voted for the selected class.
        n: Number of estimation samples per input.
        n0: Number of selection samples per input.
        alpha: Failure probability of the certificate.
        sigma: Noise level the certificate is for.
        nonfinite: Number of the ``n0 + n`` samples per input whose logits were not finite
            (``int64`` ``[B]``), counted for no class under ``nonfinite="count_against"``;
            None for a certificate built by hand.
    """

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    count: Tensor
    n: int
    n0: int
    alpha: float
    sigma: float
    nonfinite: Tensor | None = None

    @property
    def abstained(self) -> Tensor:
        """Boolean mask ``[B]``, True where the smoothed classifier abstained."""
        return self.prediction == ABSTAIN

    def __len__(self) -> int:
        return int(self.prediction.shape[0])


def _warn_sample_size(task: str, n: int, alpha: float, *, stacklevel: int) -> None:
    """Warn with :class:`SampleSizeWarning` when ``n`` can never predict/certify at ``alpha``."""
    if task == "predict":
        needed, why = min_samples_to_predict(alpha), "for the binomial test to reject"
    else:
        needed, why = min_samples_to_certify(alpha), "for a lower bound above 1/2"
    if n < needed:
        warnings.warn(
            f"{task} with n={n} at alpha={alpha} always abstains: at least n={needed} "
            f"samples are needed {why}",
            SampleSizeWarning,
            stacklevel=stacklevel + 1,
        )


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _auto_key(inputs: Tensor) -> _AutoKey:
    return (tuple(inputs.shape[1:]), inputs.dtype, str(inputs.device))


def _block_size(numel: int, device_type: str = "cpu") -> int:
    """Samples per noise block for inputs of ``numel`` elements on a device type.

    Depends only on these two, never on batch_size (the noise differs between device types
    anyway, since their generators differ).
    """
    elements = _BLOCK_ELEMENTS.get(device_type, _BLOCK_ELEMENTS_ACCELERATOR)
    largest = _MAX_BLOCK.get(device_type, _MAX_BLOCK_ACCELERATOR)
    return max(1, min(largest, elements // max(numel, 1)))


def _memory_format(inputs: Tensor) -> torch.memory_format | None:
    """``channels_last`` (or its 3-D form) when the inputs use it, else None."""
    if inputs.is_contiguous():
        return None
    if inputs.dim() == 4 and inputs.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if inputs.dim() == 5 and inputs.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _channels_last_format(inputs: Tensor) -> torch.memory_format:
    """The channels-last layout for 4-D (``channels_last``) or 5-D inputs (its 3-D form)."""
    if inputs.dim() == 4:
        return torch.channels_last
    if inputs.dim() == 5:
        return torch.channels_last_3d
    raise ValueError(
        "memory_format='channels_last' needs 4-D [B, C, H, W] or 5-D [B, C, D, H, W] inputs, got "
        f"shape {tuple(inputs.shape)}; pass memory_format='auto' or 'preserve'"
    )


def _in_layout(values: Tensor, memory_format: torch.memory_format) -> Tensor:
    """A copy of ``values`` with the strides of ``memory_format``.

    Unlike ``contiguous``, also for one channel (or 1x1 images), where both layouts are
    contiguous but convolutions pick their algorithm, and their output's layout, from the
    strides: a one-channel input with channels-last strides makes every later activation
    channels_last (1.6x faster on LeNet on two CPU cores).
    """
    return values.clone(memory_format=memory_format)


def _check_choice(name: str, value: object, choices: Sequence[str]) -> Any:
    """``value`` when it is one of the strings ``choices``, else TypeError or ValueError."""
    listed = ", ".join(map(repr, choices))
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {listed}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value


def _caller_stacklevel() -> int:
    """``stacklevel`` for a warning issued here that points at the first frame outside rsmooth."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1  # the frame that calls warnings.warn
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package
    ):
        frame, level = frame.f_back, level + 1
    return level


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and backend is not None and hasattr(backend, "synchronize"):
        backend.synchronize(device)


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _check_batch_size(batch_size: object) -> BatchSize:
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an integer or 'auto', got {type(batch_size).__name__}")
    return check_int("batch_size", batch_size)


def _check_compile(value: object) -> bool | Mapping[str, Any]:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        if "dynamic" in value:
            raise ValueError(
                "compile must not set 'dynamic': the engine feeds fixed batch shapes "
                "(dynamic=False)"
            )
        return value
    raise TypeError(
        f"compile must be a bool or a dict of torch.compile options, got {type(value).__name__}"
    )


def _check_autocast(value: object) -> torch.dtype | None:
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(f"autocast must be a torch.dtype or None, got {type(value).__name__}")
    if value not in (torch.float16, torch.bfloat16):
        raise ValueError(f"autocast must be torch.bfloat16 or torch.float16, got {value}")
    return value


def _to_device(values: Tensor, device: torch.device) -> Tensor:
    """Copy a small host tensor to ``device`` without blocking the host (pinned on CUDA)."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def _auxiliary_uniform(seeds: Sequence[int]) -> np.ndarray:
    """One uniform variate in ``(0, 1]`` per input seed, from the AUXILIARY stream.

    Input ``j``'s variate depends only on ``seeds[j]`` (a generator seeded with
    ``mix(seed, AUXILIARY, 0)``), never on the other inputs or on the device.

    Example:
        >>> u = _auxiliary_uniform([1, 2, 1])
        >>> u.dtype, bool(u[0] == u[2]), bool(u[0] != u[1]), bool(((u > 0) & (u <= 1)).all())
        (dtype('float64'), True, True, True)
    """
    values = np.empty(len(seeds), dtype=np.float64)
    for j, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(mix(seed, AUXILIARY, 0))
        values[j] = 1.0 - float(torch.rand((), generator=generator, dtype=torch.float64))
    return values


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_fold_batchnorm(value: object) -> FoldBatchNorm:
    if isinstance(value, bool) or (isinstance(value, str) and value == "auto"):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        raise ValueError(f"fold_batchnorm must be True, False or 'auto', got {value!r}")
    raise TypeError(f"fold_batchnorm must be True, False or 'auto', got {type(value).__name__}")


#: The public settings of SmoothedClassifier: each is checked by its function whenever assigned.
_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "model": check_model,
    "input_range": functools.partial(check_input_range_arg, "input_range"),
    "sigma": functools.partial(check_positive, "sigma"),
    "num_classes": lambda value: None if value is None else check_int("num_classes", value, min=2),
    "batch_size": _check_batch_size,
    "nonfinite": functools.partial(_check_choice, "nonfinite", choices=_NONFINITE_POLICIES),
    "compile": _check_compile,
    "autocast": _check_autocast,
    "memory_format": functools.partial(_check_choice, "memory_format", choices=_MEMORY_FORMATS),
    "fold_batchnorm": _check_fold_batchnorm,
}


def _output_type_message(output: object) -> str:
    name = type(output).__name__
    if isinstance(output, (tuple, list)):
        how = "e.g. `return model(x)[0]` if the logits come first"
    elif isinstance(output, dict):
        how = 'e.g. `return model(x)["logits"]`'
    elif isinstance(getattr(output, "logits", None), Tensor):
        how = "e.g. `return model(x).logits` (Hugging Face-style outputs)"
    else:
        how = "a tensor of logits"
    return (
        f"model must return a tensor of logits [N, num_classes], got a {name}; wrap it in a "
        f"module whose forward returns the logits, {how} (docs: how-to 'Certify a dataset', "
        "'Models that do not return logits')"
    )


def _unbatched_hint(inputs: Tensor) -> str:
    if inputs.dim() != 3:
        return ""
    return (
        f". inputs has shape {tuple(inputs.shape)}, read as a batch of {inputs.shape[0]} inputs "
        f"of shape {tuple(inputs.shape[1:])}: if it is one image [C, H, W], add the batch "
        "dimension with inputs.unsqueeze(0)"
    )


def _forward_error_hint(model: nn.Module, error: BaseException, inputs: Tensor) -> str | None:
    """A hint for an error raised by the model, or None to re-raise it unchanged."""
    text = str(error)
    if isinstance(model, torch.fx.GraphModule) and (
        "Guard failed" in text or "shape[0]" in text or ".size()[0]" in text
    ):
        return (
            "the model (a torch.export program) was exported with a fixed batch size, but the "
            "engine feeds it batches of other sizes; export it with a dynamic batch dimension, "
            "e.g. torch.export.export(model, (x,), dynamic_shapes=({0: "
            "torch.export.Dim('batch')},))"
        )
    if inputs.dim() == 3 and isinstance(error, RuntimeError):
        return (
            f"the model failed on inputs of shape {tuple(inputs.shape)}, which is read as a "
            f"batch of {inputs.shape[0]} inputs of shape {tuple(inputs.shape[1:])}; if it is "
            "one image [C, H, W], add the batch dimension with inputs.unsqueeze(0)"
        )
    return None


class _Progress:
    """Progress of one call in samples: tqdm when installed, else a line on stderr now and then."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._bar = None
            self._began = self._shown = time.perf_counter()
        else:
            self._bar = tqdm(total=total, desc=desc, unit="sample", unit_scale=True)

    def update(self, amount: int) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
            return
        now = time.perf_counter()
        if now - self._shown >= 5.0 or self.done >= self.total:
            self._shown = now
            rate = self.done / max(now - self._began, 1e-9)
            print(
                f"{self.desc}: {self.done:,}/{self.total:,} samples ({rate:,.0f} samples/s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class SmoothedClassifier:
    r"""A randomized-smoothing classifier over any base classifier.

    Certifies that the smoothed classifier :math:`g` is constant on an L2 ball around each input
    :cite:`cohen2019certified`. :math:`\sigma` is measured in the space the model receives its
    inputs in, so input normalisation belongs *inside* ``model`` (a first layer).

    Sampling is vectorised: forward batches of at most ``batch_size`` noisy samples are filled
    across inputs and samples, so memory is bounded by ``batch_size`` (never by ``n`` or the
    number of inputs), and certifying many inputs with a small ``n`` is as efficient as one input
    with a large ``n``. For every call, each input gets its own noise streams seeded from the
    ``generator``; sample ``s`` of an input depends only on its seed and ``s`` (fixed-size noise
    blocks), so the same generator state and arguments give bit-identical results on the same
    device for every ``batch_size``, however the samples are split and whatever other inputs
    share the call.

    Every argument is also an attribute of the same name. Assigning one checks it as the
    constructor does (nothing changes when the value is refused or fails to compile); assigning
    ``model`` drops the choices made for the old one (automatic batch size, layout, folded
    copy), and assigning ``model`` or ``compile`` compiles what is then set.

    Args:
        model: Base classifier ``f`` mapping a batch ``[N, *]`` to logits ``[N, K]``.
        sigma: Noise standard deviation :math:`\sigma > 0`.
        num_classes: Number of classes ``K``. Default: inferred from the model's output (and
            checked against it when given).
        batch_size: Number of noisy samples per forward pass, or ``"auto"``: the batch size
            tunes itself on the calls' own forward batches (growing sizes, each timed against
            the best so far; the extra time stays under 2% of the time of the rows served, so a
            small call explores a little and later calls go on) and the settled choice is
            cached per input shape, dtype and device and shown in ``repr``. Until a size has
            been timed it is 256 on the CPU and 1024 on CUDA; on CUDA an out-of-memory error
            falls back to a smaller size. Results never depend on it. Default: ``"auto"``.
        nonfinite: What a noisy sample with a non-finite logit (NaN or inf) does: ``"raise"``
            a ``ValueError`` naming the inputs and counts, or ``"count_against"``: vote for no
            class (sound; reported in :attr:`Certificate.nonfinite`). Default: ``"raise"``.
        compile: ``True`` or a dict of :func:`torch.compile` options (e.g. ``{"mode":
            "max-autotune"}``) to compile the model for certification. Every forward pass then
            has exactly the batch size's rows (the last batch is padded and its padding
            discarded), so the model compiles once. Default: False.
        autocast: ``torch.bfloat16`` or ``torch.float16`` to run the forward passes of
            :meth:`certify`, :meth:`predict` and :meth:`sample_counts` under
            :func:`torch.autocast` (the noise stays in the inputs' dtype). Default: None.
        input_range: ``(low, high)`` every input entry must lie in, or ``None`` to turn the
            check off (inputs in another space). Default: ``(0.0, 1.0)``, pixels scaled to
            [0, 1]: 8-bit pixels, or a normalisation applied outside the model, are errors.
        memory_format: Layout of the noisy batches the model receives. ``"auto"``: on the CPU,
            4-D floating-point inputs ``[B, C, H, W]`` reach the model as ``channels_last``
            (oneDNN's convolutions run faster on it; one-channel images get channels-last
            strides, which make every later activation ``channels_last``), provided that a
            check, once per input shape, dtype and device, finds that the model accepts that
            layout and returns the same logits as on the standard one up to rounding;
            otherwise, and on other devices, the inputs' own layout. ``"preserve"``: the
            inputs' own layout. ``"channels_last"``: always (4-D or 5-D inputs). The choice does
            not depend on timing. Default: ``"auto"``.
        fold_batchnorm: Whether the forward passes of :meth:`certify`, :meth:`predict` and
            :meth:`sample_counts` run a copy of the model whose BatchNorm layers (eval mode, with
            running statistics) are folded into the convolution before them: the same classifier
            up to rounding, without BatchNorm's passes over the activations (a fifth of the CIFAR
            ResNet-20's forward time on two CPU cores). The copy is traced with :mod:`torch.fx`
            (parts it cannot trace keep their own code; a residual addition adds into a
            convolution's output that nothing else reads), checked once against the model on up
            to 32 clean inputs without autocast (a copy that differs beyond rounding is dropped),
            and rebuilt whenever the model's modules, their attributes or the values of their
            tensors change; the model itself is never modified. Models with forward hooks, or
            with an attribute whose in-place changes could not be seen (an object other than
            numbers, strings, tensors, functions and containers of these), are not folded.
            Python side effects inside ``forward`` (appending to a list, say) do not happen in
            the copy's passes, and the copy and a snapshot of the model's tensors take memory.
            ``"auto"``: on the CPU; ``True``: on every device; ``False``: never. Not with
            ``compile``. Default: ``"auto"``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or an argument has the wrong type.
        ValueError: ``sigma`` is not positive and finite, ``num_classes < 2``, ``batch_size < 1``.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> smoothed = SmoothedClassifier(model, sigma=0.25, batch_size=500, input_range=None)
        >>> x = torch.tensor([[3.0, -3.0], [0.0, 0.0]])
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.eye(2)), model[0].bias.zero_()
        >>> g = torch.Generator().manual_seed(0)
        >>> cert = smoothed.certify(x, n=1000, n0=100, alpha=0.001, generator=g)
        >>> cert.prediction.tolist()
        [0, -1]
        >>> round(float(cert.radius[0]), 3)  # every vote for class 0: the cap for n=1000
        0.616
        >>> round(smoothed.max_radius(n=1000, alpha=0.001), 3)
        0.616
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        *,
        num_classes: int | None = None,
        batch_size: BatchSize = "auto",
        nonfinite: NonFinitePolicy = "raise",
        compile: bool | Mapping[str, Any] = False,
        autocast: torch.dtype | None = None,
        input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE,
        memory_format: MemoryFormat = "auto",
        fold_batchnorm: FoldBatchNorm = "auto",
    ) -> None:
        # the caches first: assigning a setting below validates it and resets what depends on it
        self._auto: dict[_AutoKey, AutoBatch] = {}  # batch_size="auto": tuning per key
        self._compiled: Callable[[Tensor], object] | None = None
        self._autocast_checked: set[str] = set()
        self._layouts: dict[_AutoKey, bool] = {}  # memory_format="auto": channels_last accepted
        self._folded = FoldedCopy()
        self.model: nn.Module = model
        self.input_range: tuple[float, float] | None = input_range
        self.sigma: float = sigma
        self.num_classes: int | None = num_classes
        self.batch_size: BatchSize = batch_size
        self.nonfinite: NonFinitePolicy = nonfinite
        self.compile: bool | Mapping[str, Any] = compile
        self.autocast: torch.dtype | None = autocast
        self.memory_format: MemoryFormat = memory_format
        self.fold_batchnorm: FoldBatchNorm = fold_batchnorm

    def __setattr__(self, name: str, value: object) -> None:
        """Settings are validated whenever they are assigned, and what depends on them reset.

        Nothing changes when the value is refused, or when compiling what it sets fails.
        """
        check = _SETTINGS.get(name)
        if check is None:
            object.__setattr__(self, name, value)
            return
        checked: Any = check(value)
        resets: dict[str, object] = {}
        if name == "compile" or (name == "model" and "compile" in vars(self)):
            model = checked if name == "model" else self.model
            options = checked if name == "compile" else self.compile
            resets["_compiled"] = None
            if options is not False:
                extra = {} if options is True else dict(options)
                resets["_compiled"] = torch.compile(model, dynamic=False, **extra)
        if name == "model":  # another model: the choices made for the old one go (new objects,
            # so that a shallow copy of this classifier keeps its own)
            resets |= {"_auto": {}, "_layouts": {}, "_folded": FoldedCopy()}
        if name == "autocast":
            resets["_autocast_checked"] = set()
        object.__setattr__(self, name, checked)
        for key, reset in resets.items():
            object.__setattr__(self, key, reset)

    def __repr__(self) -> str:
        extra = "" if self.nonfinite == "raise" else f", nonfinite={self.nonfinite!r}"
        if self.compile is not False:
            extra += f", compile={self.compile!r}"
        if self.autocast is not None:
            extra += f", autocast={self.autocast}"
        if self.memory_format != "auto":
            extra += f", memory_format={self.memory_format!r}"
        elif any(self._layouts.values()):
            shapes = "; ".join(
                f"{list(shape)} {str(dtype).removeprefix('torch.')} on {device}"
                for (shape, dtype, device), accepted in self._layouts.items()
                if accepted
            )
            extra += f", memory_format='auto' (channels_last for {shapes})"
        folded = self._folded.folded_layers()
        if self.fold_batchnorm != "auto":
            extra += f", fold_batchnorm={self.fold_batchnorm!r}"
        elif folded:
            extra += f", fold_batchnorm='auto' ({folded} BatchNorm layers folded)"
        return (
            f"{type(self).__name__}(sigma={self.sigma}, num_classes={self.num_classes}, "
            f"batch_size={self._batch_size_repr()}{extra})"
        )

    # ------------------------------------------------------------------ engine
    def _input_seeds(self, inputs: Tensor, generator: GeneratorArg) -> list[int]:
        """One 63-bit seed per input, the root of that input's noise streams.

        ``generator=None`` draws from the global torch RNG, a ``torch.Generator`` gives ``B``
        draws from it, and a sequence of ``B`` generators gives one draw from each (so input
        ``j``'s seed depends only on ``generator[j]``).
        """
        if generator is None or isinstance(generator, torch.Generator):
            device = generator.device if generator is not None else torch.device("cpu")
            draws = torch.randint(
                0, _SEED_HIGH, (inputs.shape[0],), generator=generator, device=device
            )
            return [int(seed) for seed in draws.tolist()]
        return [
            int(torch.randint(0, _SEED_HIGH, (1,), generator=g, device=g.device).item())
            for g in generator
        ]

    def _chosen_batch_sizes(self) -> dict[_AutoKey, int]:
        """``batch_size="auto"``: the settled choice per input shape, dtype and device."""
        return {key: t.choice for key, t in self._auto.items() if t.choice is not None}

    def _batch_size_repr(self) -> str:
        chosen = self._chosen_batch_sizes()
        if self.batch_size != "auto" or not chosen:
            return repr(self.batch_size)
        text = "; ".join(
            f"{value} for {list(shape)} {str(dtype).removeprefix('torch.')} on {device}"
            for (shape, dtype, device), value in chosen.items()
        )
        return f"'auto' (chosen: {text})"

    def _auto_tuning(self, inputs: Tensor) -> AutoBatch | None:
        """The automatic batch size's search for inputs like ``inputs``, started on first use.

        None for an integer ``batch_size``. There is one per input shape, dtype and device.
        """
        if self.batch_size != "auto":
            return None
        key = _auto_key(inputs)
        tuning = self._auto.get(key)
        if tuning is None:
            largest = None
            if inputs.device.type == "cpu":
                per_row = max(1, math.prod(inputs.shape[1:])) * inputs.element_size()
                largest = max(1, _AUTO_MAX_CPU_BYTES // per_row)
            tuning = self._auto[key] = AutoBatch.for_device(inputs.device.type, largest)
        return tuning

    def _planned_batch_size(self, inputs: Tensor) -> int:
        """The forward batch size for inputs like ``inputs``, as far as it is known before a call.

        An integer ``batch_size``, else the automatic choice, the best size timed so far, or the
        device's default.
        """
        tuning = self._auto_tuning(inputs)
        if tuning is None:
            return int(self.batch_size)
        if tuning.choice is not None:
            return tuning.choice
        return tuning.default if tuning.best is None else tuning.best

    def _inference_model(self, inputs: Tensor) -> nn.Module:
        """The module the eager forward passes for ``inputs`` run: the model or its folded copy.

        With ``fold_batchnorm`` (on the CPU for ``"auto"``) and a model with BatchNorm layers,
        no forward hooks and no attribute whose changes could not be seen, the copy with those
        layers folded into the convolutions before them, built on first use and rebuilt whenever
        the model changes, kept only if a check finds the same logits as the model's up to
        rounding.
        """
        if (
            self.fold_batchnorm is False
            or (self.fold_batchnorm == "auto" and inputs.device.type != "cpu")
            or self._compiled is not None
            or count_batchnorms(self.model) == 0
            or has_hooks(self.model)
        ):
            self._folded.clear()
            return self.model
        try:
            entry = self._folded.lookup(self.model)
            if entry is None:
                built = self._fold(inputs)
                if built is None:  # the model itself failed: decide on a later call
                    self._folded.clear()
                    return self.model
                entry, watch_values = built
                self._folded.store(self.model, entry, watch_values=watch_values)
        except Unfoldable:
            self._folded.clear()
            return self.model
        return entry[0]

    def _fold(self, inputs: Tensor) -> tuple[tuple[nn.Module, int], bool] | None:
        """``((model to run, layers folded), watch_values)`` for the model as it is now.

        The folded copy is kept when it returns the model's logits up to rounding on the first
        ``_CHECK_ROWS`` clean inputs, compared without autocast (in the inputs' dtype, so the
        tolerance is tight). A copy that fails or differs (traced code that no longer matches the
        model's) is dropped, silently, until the model's tensors change (``watch_values``); a
        model that cannot be copied or traced, or has nothing to fold, runs as it is until its
        structure changes. None when the model itself fails on the clean inputs without autocast
        (its errors, if any, then come from the forward passes; a later call decides).
        """
        with preserve_model_state(self.model, train=False):
            try:
                with torch.no_grad():
                    folded, count = fold_batchnorm(self.model)
            except Exception:  # cannot be copied: run the model as it is
                return (self.model, 0), False
            if count == 0:
                return (self.model, 0), False
            rows = inputs[:_CHECK_ROWS].contiguous()
            with torch.inference_mode():
                try:
                    expected = self._check_forward(self.model, rows, inputs, autocast=False)
                except _OutOfMemoryError:
                    raise
                except Exception:
                    return None
                try:
                    got = self._check_forward(folded, rows, inputs, autocast=False)
                except _OutOfMemoryError:
                    raise
                except Exception:  # any failure means: run the model as it is
                    return (self.model, 0), True
        reduced = expected.dtype not in _CHECK_RTOL
        if self._logit_difference(expected, got, reduced=reduced) is not None:
            return (self.model, 0), True
        return (folded, count), True

    def _check_forward(
        self,
        model: nn.Module,
        rows: Tensor,
        inputs: Tensor,
        *,
        autocast: bool = True,
        memory_format: torch.memory_format | None = None,
    ) -> Tensor:
        """``model``'s logits on the clean ``rows`` of a check, in ``memory_format``.

        Run in pieces of at most an integer ``batch_size``, so that the checks' rows (and hence
        their outcome) do not depend on it.
        """
        size = rows.shape[0] if self.batch_size == "auto" else int(self.batch_size)
        pieces = []
        for piece in rows.split(size):
            if memory_format is not None:
                piece = _in_layout(piece, memory_format)
            pieces.append(self._forward(piece, inputs, model=model, autocast=autocast))
        return torch.cat(pieces)

    def _logit_difference(self, expected: Tensor, got: Tensor, *, reduced: bool) -> float | None:
        """None when ``got`` equals ``expected`` (logits) up to rounding, else how far apart.

        NaN and inf must sit at the same places; finite values may differ by ``_CHECK_RTOL`` of
        the largest one (``_CHECK_RTOL_REDUCED`` with ``reduced``: under autocast or in a
        half-precision dtype).
        """
        if got.shape != expected.shape:
            return math.inf
        rtol = _CHECK_RTOL_REDUCED if reduced else _CHECK_RTOL[expected.dtype]
        a, b = expected.double(), got.double()
        finite, infinite = torch.isfinite(a), torch.isinf(a)
        if (
            not torch.equal(finite, torch.isfinite(b))
            or not torch.equal(torch.isnan(a), torch.isnan(b))
            or not torch.equal(a[infinite], b[infinite])
        ):  # NaN or inf in one only, or infinities of other signs
            return math.inf
        if not bool(finite.any()):
            return None
        scale = max(1.0, float(a[finite].abs().max()))
        difference = float((a[finite] - b[finite]).abs().max())
        return difference if difference > rtol * scale else None

    def _batch_format(self, inputs: Tensor, model: nn.Module) -> torch.memory_format | None:
        """The layout of the forward batches of ``model`` for ``inputs`` (None: the standard one)."""
        own = _memory_format(inputs)
        if self.memory_format == "channels_last":
            return _channels_last_format(inputs)
        if (
            self.memory_format == "preserve"
            or own is not None
            or inputs.dim() != 4
            or inputs.device.type != "cpu"
            or not inputs.is_floating_point()
        ):
            return own
        key = _auto_key(inputs)
        if key not in self._layouts:
            self._layouts[key] = self._accepts_channels_last(inputs, model)
        return torch.channels_last if self._layouts[key] else None

    def _accepts_channels_last(self, inputs: Tensor, model: nn.Module) -> bool:
        """Whether ``model`` runs on ``channels_last`` rows of ``inputs`` with the same logits.

        Runs ``model`` on the first ``_CHECK_ROWS`` clean inputs (in pieces of at most an integer
        ``batch_size``) in both layouts. A model that fails on ``channels_last`` (a ``view`` of
        its input, say), or whose logits differ by more than rounding (code that reads raw
        memory), gets the standard layout; the second case warns, since such a model breaks for
        channels_last callers too. Only these clean inputs are checked: code that depends on the
        layout only for other inputs is not caught (``memory_format="preserve"`` avoids it).
        """
        rows = inputs[:_CHECK_ROWS].contiguous()
        with preserve_model_state(self.model, train=False), torch.inference_mode():
            standard = self._check_forward(model, rows, inputs)
            try:
                other = self._check_forward(model, rows, inputs, memory_format=torch.channels_last)
            except _OutOfMemoryError:
                raise
            except Exception:  # any failure means: keep the standard layout
                return False
        reduced = self.autocast is not None or standard.dtype not in _CHECK_RTOL
        difference = self._logit_difference(standard, other, reduced=reduced)
        if difference is not None:
            return self._layout_mismatch(difference)
        return True

    def _layout_mismatch(self, difference: float) -> bool:
        warnings.warn(
            "the model's logits on channels_last inputs differ from those on the same inputs in "
            f"the standard layout (largest difference {difference:.3g}), beyond rounding: it "
            "reads its input's raw memory somewhere, or its output is random. rsmooth feeds it "
            "the standard layout; pass memory_format='preserve' to skip this check",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )
        return False

    def _autocast_forward(self, batch: Tensor) -> object:
        with self._autocast_context(batch.device):
            return self.model(batch)

    def _autocast_context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    def _check_autocast_device(self, device: torch.device) -> None:
        """Refuse an autocast dtype the device does not support (torch would only warn)."""
        if self.autocast is None or device.type in self._autocast_checked:
            return
        available = getattr(torch.amp, "is_autocast_available", None)
        if available is not None and not available(device.type):
            raise ValueError(
                f"autocast is not available on device type {device.type!r}; pass autocast=None"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.autocast(device_type=device.type, dtype=self.autocast)
        if caught:
            raise ValueError(
                f"autocast={self.autocast} is not supported on {device} ({caught[0].message}); "
                "pass another dtype (torch.bfloat16 on the CPU, torch.float16 on older GPUs) or "
                "autocast=None"
            )
        self._autocast_checked.add(device.type)

    def _check_logits(self, logits: object, rows: int, inputs: Tensor) -> int:
        if not isinstance(logits, Tensor):
            raise TypeError(_output_type_message(logits))
        if logits.dim() != 2 or logits.shape[0] != rows:
            raise ValueError(
                f"model must return logits of shape [N, num_classes] for N inputs, got shape "
                f"{tuple(logits.shape)} for N={rows}{_unbatched_hint(inputs)}"
            )
        classes = int(logits.shape[1])
        if self.num_classes is not None and classes != self.num_classes:
            raise ValueError(
                f"num_classes is {self.num_classes} but the model returned {classes} logits"
            )
        if classes < 2:
            raise ValueError(f"the model must return at least 2 logits, got {classes}")
        return classes

    def _forward(
        self,
        batch: Tensor,
        inputs: Tensor,
        *,
        model: Callable[[Tensor], object] | None = None,
        autocast: bool = True,
    ) -> Tensor:
        """The logits of ``model`` (default: the model) on one forward batch.

        ``model`` may be the compiled model or the folded copy; ``autocast=False`` runs it
        without the ``autocast`` option. Raises with hints for the usual mistakes.
        """
        if model is None:
            model = self.model
        context = self._autocast_context(batch.device) if autocast else contextlib.nullcontext()
        try:
            with context:
                logits = model(batch)
        except _OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError, ValueError) as error:
            hint = _forward_error_hint(self.model, error, inputs)
            if hint is None:
                raise
            raise ValueError(
                f"{hint} (the model raised {type(error).__name__}: {error})"
            ) from error
        if not isinstance(logits, Tensor):
            raise TypeError(_output_type_message(logits))
        self._check_logits(logits, batch.shape[0], inputs)
        return logits

    def _counts(
        self,
        inputs: Tensor,
        seeds: Sequence[int],
        *,
        stream: int,
        start: int,
        stop: int,
        progress: _Progress | None = None,
    ) -> Tensor:
        """``int64`` counts ``[B, K]`` of ``argmax f(x_j + delta_{j,s})`` over ``s`` in ``[start, stop)``.

        Sample ``s`` of stream ``stream`` of input ``j`` depends only on ``(seeds[j], stream,
        s)``: row ``s % BLOCK`` of noise block ``s // BLOCK``, one ``normal_`` of shape
        ``[BLOCK, *input_shape]`` drawn from a generator seeded with ``mix(seeds[j], stream,
        s // BLOCK)``, where ``BLOCK`` depends only on the input's number of elements and the
        device type. So the
        counts do not depend on ``batch_size``, on how ``[0, n)`` is split into calls, or on the
        other inputs of the call. Forward batches of ``batch_size`` samples are filled across
        inputs and samples.

        Only samples whose logit row is finite are counted, so ``(stop - start) -
        counts.sum(1)`` is the number of non-finite samples per input (``nonfinite="raise"``
        raises ``ValueError`` instead).
        """
        batch = inputs.shape[0]
        device, dtype = inputs.device, inputs.dtype
        sample_shape = tuple(inputs.shape[1:])
        block = _block_size(math.prod(sample_shape), device.type)
        total = batch * (stop - start)
        self._check_autocast_device(device)
        tuning = self._auto_tuning(inputs)
        if tuning is not None:
            tuning.begin_call(total)
        runner = self._inference_model(inputs)  # the model, or its copy with BatchNorm folded
        memory_format = self._batch_format(inputs, runner)
        buffer = torch.empty((0, *sample_shape), dtype=dtype, device=device)
        noise = torch.empty((block, *sample_shape), dtype=dtype, device=device)
        noise_generator = torch.Generator(device=device)
        held: tuple[int, int] | None = None  # (input, block) whose noise is in `noise`
        counts: Tensor | None = None
        nonfinite = torch.zeros(batch + 1, dtype=torch.long, device=device)
        owners: list[int] = []
        lengths: list[int] = []
        filled = done = 0
        limit = math.inf  # most rows per forward pass; lowered when one runs out of memory
        # the batch being filled: its size, and whether it is timed for the automatic batch size
        # and runs through the compiled model (always a full batch, padded: compiled once)
        size, timed, compiled = 0, False, False
        model: Callable[[Tensor], object] = runner  # the compiled model for compiled batches

        def fill(j: int, first: int, last: int, offset: int) -> None:
            nonlocal held
            s = first
            while s < last:
                index = s // block
                end = min(last, (index + 1) * block)
                if held != (j, index):
                    noise_generator.manual_seed(mix(seeds[j], stream, index))
                    noise.normal_(0.0, self.sigma, generator=noise_generator)
                    held = (j, index)
                row = s - index * block
                torch.add(
                    noise[row : row + end - s], inputs[j], out=buffer[offset : offset + end - s]
                )
                offset += end - s
                s = end

        def begin_batch() -> None:
            nonlocal size, timed, compiled, buffer, model
            if tuning is None:
                size, timed = int(self.batch_size), False
            else:  # explicit sizes run compiled at once; automatic ones once they settle
                size, timed = tuning.next_size(total - done)
            compiled = self._compiled is not None and (tuning is None or tuning.choice == size)
            model = self._compiled if compiled and self._compiled is not None else runner
            if not compiled:
                size = min(size, total - done)
            if buffer.shape[0] < size:
                layout = torch.contiguous_format if memory_format is None else memory_format
                buffer = torch.empty(
                    (size, *sample_shape), dtype=dtype, device=device, memory_format=layout
                )

        def forward(count: int) -> Tensor:
            nonlocal limit
            while True:
                try:
                    if count <= limit:
                        return self._forward(buffer[:count], inputs, model=model)
                    pieces = buffer[:count].split(int(limit))
                    return torch.cat(
                        [self._forward(piece, inputs, model=model) for piece in pieces]
                    )
                except _OutOfMemoryError:
                    if tuning is None or limit == 1:
                        raise
                    limit = tuning.out_of_memory(int(min(count, limit)))
                    _release_memory(device)  # the noise does not depend on it: same results

        def flush() -> None:
            nonlocal counts, filled, done
            if compiled and filled < size:
                buffer[filled:size].zero_()  # padding rows; their outputs are discarded
                logits = forward(size)[:filled]
            elif timed and tuning is not None:
                _synchronize(device)
                began = _clock()
                logits = forward(filled)
                _synchronize(device)
                tuning.record(filled, _clock() - began)
            else:
                logits = forward(filled)
            classes = int(logits.shape[1])
            if counts is None:
                counts = torch.zeros((batch + 1) * classes, dtype=torch.long, device=device)
            owner = _to_device(
                torch.repeat_interleave(torch.tensor(owners), torch.tensor(lengths)), device
            )
            finite = torch.isfinite(logits).all(dim=1)
            flat = owner * classes + logits.argmax(dim=1)
            counts.index_add_(0, flat, finite.long())
            nonfinite.index_add_(0, owner, (~finite).long())
            if progress is not None:
                progress.update(filled)
            owners.clear()
            lengths.clear()
            done += filled
            filled = 0

        with preserve_model_state(self.model, train=False), torch.inference_mode():
            for j in range(batch):
                s = start
                while s < stop:
                    if filled == 0:
                        begin_batch()
                    take = min(stop - s, size - filled)
                    fill(j, s, s + take, filled)
                    owners.append(j)
                    lengths.append(take)
                    filled += take
                    s += take
                    if filled == size:
                        flush()
            if filled:
                flush()
        if counts is None:  # unreachable: stop > start and the batch is non-empty
            raise RuntimeError("no noise samples were drawn")
        self._check_nonfinite(nonfinite[:batch], stop - start)
        return counts.view(batch + 1, -1)[:batch]

    def _check_nonfinite(self, nonfinite: Tensor, num: int) -> None:
        """Raise under ``nonfinite="raise"`` when some samples gave non-finite logits."""
        if self.nonfinite != "raise" or not bool(nonfinite.any()):
            return
        bad = torch.nonzero(nonfinite).flatten().tolist()
        amounts = nonfinite[bad].tolist()
        listed = ", ".join(
            f"input {j}: {k} of {num}" for j, k in zip(bad[:10], amounts[:10], strict=True)
        )
        more = f", and {len(bad) - 10} more inputs" if len(bad) > 10 else ""
        raise ValueError(
            f"the model returned non-finite logits (NaN or inf) for some noisy samples "
            f"({listed}{more}); a non-finite logit row is not a vote. Fix the model, or pass "
            "nonfinite='count_against' to SmoothedClassifier to count such samples against "
            "every class (the certificate stays sound, with fewer votes)"
        )

    def _validate_call(
        self, inputs: Tensor, generator: GeneratorArg
    ) -> tuple[Tensor, torch.Generator | list[torch.Generator] | None]:
        inputs = check_inputs("inputs", inputs)
        check_input_range("inputs", inputs, self.input_range)
        if isinstance(generator, (list, tuple)):
            if len(generator) != inputs.shape[0]:
                raise ValueError(
                    "generator must be one torch.Generator or a sequence of one per input, got "
                    f"a sequence of length {len(generator)} for {inputs.shape[0]} inputs"
                )
            checked = [check_generator(g, inputs.device) for g in generator]
            if any(g is None for g in checked):
                raise TypeError("generator must not contain None")
            return inputs, [g for g in checked if g is not None]
        return inputs, check_generator(generator, inputs.device)

    # ------------------------------------------------------------------ public
    def sample_counts(self, inputs: Tensor, *, num: int, generator: GeneratorArg = None) -> Tensor:
        """Count the base classifier's votes under ``num`` noise draws per input.

        Args:
            inputs: Batch ``[B, *]``.
            num: Noise draws per input.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]`` and the sample sizes, never on ``batch_size``).

        Returns:
            ``int64`` counts ``[B, K]`` on the inputs' device; each row sums to ``num``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(3, 4), sigma=0.5)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.sample_counts(torch.zeros(2, 3), num=50, generator=g).sum(1).tolist()
            [50, 50]
        """
        inputs, generator = self._validate_call(inputs, generator)
        num = check_int("num", num)
        seeds = self._input_seeds(inputs, generator)
        return self._counts(inputs, seeds, stream=ESTIMATION, start=0, stop=num)

    def predict(
        self,
        inputs: Tensor,
        *,
        n: int = 100_000,
        alpha: float = 0.001,
        generator: GeneratorArg = None,
        progress: bool = False,
    ) -> Tensor:
        """PREDICT: the smoothed classifier's class, abstaining unless the vote is significant.

        Draws ``n`` noisy samples per input, takes the two most frequent classes and returns the
        first unless the two-sided binomial test of their counts at p = 1/2 has p-value > alpha
        (then :data:`ABSTAIN`). With probability at least ``1 - alpha`` a returned class is the
        smoothed classifier's class.

        Args:
            inputs: Batch ``[B, *]``.
            n: Noise draws per input. Default: 100,000.
            alpha: Level of the abstain test. Default: 0.001.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]`` and the sample sizes, never on ``batch_size``).
            progress: Show the samples done and the rate on stderr (tqdm when installed, the
                ``progress`` extra; else a line every few seconds). Default: False.

        Returns:
            ``int64`` tensor ``[B]`` of classes, :data:`ABSTAIN` (-1) where it abstains.

        Warns:
            SampleSizeWarning: ``n`` is too small for the test ever to pass at this ``alpha``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.predict(torch.zeros(3, 2), n=200, generator=g).shape
            torch.Size([3])
        """
        inputs, generator = self._validate_call(inputs, generator)
        n = check_int("n", n)
        alpha = check_open_unit("alpha", alpha)
        _warn_sample_size("predict", n, alpha, stacklevel=2)
        seeds = self._input_seeds(inputs, generator)
        bar = _Progress(n * len(seeds), "predict") if _check_bool("progress", progress) else None
        try:
            counts = self._counts(inputs, seeds, stream=ESTIMATION, start=0, stop=n, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        top_counts, top_classes = counts.topk(2, dim=1)
        top = top_counts.cpu().tolist()
        keep = [binomial_pvalue(c1, c2) <= alpha for c1, c2 in top]
        prediction = top_classes[:, 0].clone()
        prediction[~torch.tensor(keep, device=prediction.device)] = ABSTAIN
        return prediction

    def certify(
        self,
        inputs: Tensor,
        *,
        n: int = 100_000,
        n0: int = 100,
        alpha: float = 0.001,
        generator: GeneratorArg = None,
        progress: bool = False,
        bound: Literal["clopper-pearson", "randomized"] = "clopper-pearson",
    ) -> Certificate:
        r"""CERTIFY: a class and an L2 radius on which the smoothed classifier is constant.

        For each input, ``n0`` noise draws select the candidate class :math:`\hat c_A` (ties go
        to the lowest index); ``n`` fresh, independent draws count its votes :math:`n_A`; the
        one-sided :math:`(1-\alpha)` Clopper–Pearson lower bound :math:`\underline{p_A}` gives
        the radius :math:`R = \sigma\,\Phi^{-1}(\underline{p_A})`. If
        :math:`\underline{p_A} < 1/2` it abstains (prediction :data:`ABSTAIN`, radius 0).
        With probability at least :math:`1-\alpha` over the sampling, a returned class is
        :math:`g(x)` and :math:`g` is constant on the ball of radius :math:`R`. The radius can
        never exceed :func:`~rsmooth.stats.max_certified_radius` ``(n, alpha, sigma)``.

        Args:
            inputs: Batch ``[B, *]``.
            n: Estimation draws per input. Default: 100,000.
            n0: Selection draws per input. Default: 100.
            alpha: Failure probability. Default: 0.001.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]`` and the sample sizes, never on ``batch_size``).
            progress: Show the samples done and the rate on stderr (tqdm when installed, the
                ``progress`` extra; else a line every few seconds). Default: False.
            bound: ``"clopper-pearson"`` (CERTIFY's bound, reproduces published numbers) or
                ``"randomized"``: the exact randomized bound
                :func:`~rsmooth.stats.randomized_clopper_pearson_lower`, never smaller, with its
                uniform draw taken from the input's own noise stream (reproducible). It helps
                mostly at the radius cap (all votes for the class). Default: ``"clopper-pearson"``.

        Returns:
            A :class:`Certificate` with tensors of shape ``[B]``.

        Warns:
            SampleSizeWarning: ``n`` is too small for any input ever to be certified at ``alpha``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> cert = smoothed.certify(torch.zeros(3, 2), n=500, generator=g)
            >>> cert.radius.shape, cert.prediction.dtype
            (torch.Size([3]), torch.int64)
        """
        inputs, generator = self._validate_call(inputs, generator)
        n = check_int("n", n)
        n0 = check_int("n0", n0)
        alpha = check_open_unit("alpha", alpha)
        _warn_sample_size("certify", n, alpha, stacklevel=2)
        if bound not in ("clopper-pearson", "randomized"):
            raise ValueError(f"bound must be 'clopper-pearson' or 'randomized', got {bound!r}")
        seeds = self._input_seeds(inputs, generator)
        total = (n0 + n) * len(seeds)
        bar = _Progress(total, "certify") if _check_bool("progress", progress) else None
        try:
            return self._certify(
                inputs, n, n0, alpha, seeds, progress=bar, randomized=bound == "randomized"
            )
        finally:
            if bar is not None:
                bar.close()

    def _certify(
        self,
        inputs: Tensor,
        n: int,
        n0: int,
        alpha: float,
        seeds: Sequence[int],
        *,
        progress: _Progress | None = None,
        randomized: bool = False,
    ) -> Certificate:
        """CERTIFY with one seed per input (see :meth:`_input_seeds`)."""
        selection = self._counts(
            inputs, seeds, stream=SELECTION, start=0, stop=n0, progress=progress
        )
        candidate = selection.argmax(dim=1)
        estimation = self._counts(
            inputs, seeds, stream=ESTIMATION, start=0, stop=n, progress=progress
        )
        nonfinite = (n0 - selection.sum(dim=1)) + (n - estimation.sum(dim=1))
        count = estimation.gather(1, candidate[:, None])[:, 0]
        if randomized:
            u = _auxiliary_uniform(seeds)
            p_lower = randomized_clopper_pearson_lower(count.cpu().numpy(), n, alpha, u)
        else:
            p_lower = clopper_pearson_lower(count.cpu().numpy(), n, alpha)
        radius = certified_radius(p_lower, self.sigma)
        abstain = p_lower < 0.5
        device, dtype = inputs.device, _float_dtype(inputs.device)
        prediction = candidate.clone()
        prediction[torch.from_numpy(abstain).to(device)] = ABSTAIN
        return Certificate(
            prediction=prediction,
            radius=torch.from_numpy(np.where(abstain, 0.0, radius)).to(device, dtype),
            p_lower=torch.from_numpy(p_lower).to(device, dtype),
            count=count,
            n=n,
            n0=n0,
            alpha=alpha,
            sigma=self.sigma,
            nonfinite=nonfinite,
        )

    def soft_predict(
        self,
        inputs: Tensor,
        *,
        num_noise: int = 8,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""The soft smoothed classifier :math:`\hat F(x) = \frac1m\sum_i \mathrm{softmax}(f(x+\delta_i))`.

        Differentiable in the inputs and the model's parameters (one forward pass over the
        ``num_noise * B`` noisy copies, in eval mode; the model's mode is restored).

        Args:
            inputs: Batch ``[B, *]``.
            num_noise: Noise copies ``m`` per input. Default: 8.
            generator: Optional ``torch.Generator`` on the inputs' device.

        Returns:
            Probabilities ``[B, K]``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 3), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.soft_predict(torch.zeros(4, 2), generator=g).shape
            torch.Size([4, 3])
        """
        inputs = check_inputs("inputs", inputs)
        check_input_range("inputs", inputs, self.input_range)
        generator = check_generator(generator, inputs.device)
        num_noise = check_int("num_noise", num_noise)
        noise = sample_noise(inputs, self.sigma, num_noise, generator=generator)
        with preserve_model_state(self.model, train=False):
            return soft_smoothed_probs(self.model, inputs, noise)

    def max_radius(self, *, n: int = 100_000, alpha: float = 0.001) -> float:
        """The largest radius :meth:`certify` can return with ``n`` samples at level ``alpha``.

        Example:
            >>> round(SmoothedClassifier(nn.Linear(2, 2), sigma=0.5).max_radius(), 3)
            1.906
        """
        return max_certified_radius(n, alpha, self.sigma)

    def certify_radius(
        self,
        inputs: Tensor,
        radius: float | Sequence[float],
        *,
        alpha: float = 0.001,
        max_n: int = 100_000,
        n0: int = 100,
        beta: float | None = None,
        growth: float = 1.5,
        candidates: Tensor | None = None,
        generator: GeneratorArg = None,
    ) -> RadiusCertificate:
        r"""Sequential certification at one radius or a grid: "certified at r?" with few samples.

        One candidate class per input (from ``n0`` fresh selection samples, or ``candidates``);
        its votes are counted cumulatively at the looks
        :func:`~rsmooth.stats.sequential_looks` ``(max_n, alpha, Phi(min(radius)/sigma),
        growth)``, and radius :math:`r_j` is certified at look :math:`k` once the
        Clopper–Pearson lower bound at level :math:`\alpha/K` reaches
        :math:`\Phi(r_j/\sigma)` (integer thresholds, :func:`~rsmooth.stats.sequential_thresholds`),
        or ruled out once the upper bound at :math:`\beta/K` falls below it. An input stops
        when every radius is decided (stopped inputs draw no more samples; the others keep the
        forward batches full); radii still open at ``max_n`` are undecided
        :cite:`horvath2022boosting,voracek2024confidence`.

        **Guarantee.** For each input, with probability at least ``1 - alpha``, every claim it
        reports holds at once: the smoothed classifier predicts ``prediction`` and is constant
        on the L2 ball of radius ``radius`` (so of every certified radius). With
        ``candidates``, a claim is made only when that class is the smoothed prediction.
        "Ruled out" is not a certificate of non-robustness. The guarantee holds at the pre-set
        looks; it does not extend past ``max_n``. Use :meth:`certify` for ACR.

        Input ``j``'s result depends only on its noise stream (its seed), the arguments and the
        schedule, not on ``batch_size`` or the other inputs of the call.

        Args:
            inputs: Batch ``[B, *]``.
            radius: One radius, or a sorted sequence of radii (the grid), all ``>= 0``.
            alpha: Failure probability of the certificates. Default: 0.001.
            max_n: Largest number of estimation samples per input (the last look).
                Default: 100,000.
            n0: Selection samples per input (unused with ``candidates``). Default: 100.
            beta: Failure probability of the "ruled out" decisions (only affects cost).
                Default: ``alpha``.
            growth: Ratio of consecutive looks, ``> 1``. Default: 1.5.
            candidates: Classes to test instead of selecting them (``int64`` ``[B]``, e.g. the
                labels when measuring certified accuracy). Default: None.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input.

        Returns:
            A :class:`~rsmooth.RadiusCertificate` (tensors ``[B]`` and ``[B, J]``).

        Raises:
            ValueError: Negative or unsorted radii, ``max_n`` too small for the largest radius
                (the message names the smallest that works), ``growth <= 1``, ``beta`` or
                ``alpha`` outside (0, 1), ``candidates`` of the wrong shape or class range.
            TypeError: ``candidates`` is not an integer tensor, or an argument has the wrong type.

        Example:
            >>> model = nn.Linear(2, 2)
            >>> with torch.no_grad():
            ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
            ...     _ = model.bias.zero_()
            >>> smoothed = SmoothedClassifier(model, sigma=0.5, input_range=None)
            >>> x = torch.tensor([[2.0, 0.0], [0.4, 0.0]])  # true radii 2.0 and 0.4
            >>> g = torch.Generator().manual_seed(0)
            >>> cert = smoothed.certify_radius(x, [0.25, 0.5], max_n=20_000, generator=g)
            >>> cert.certified.tolist()
            [[True, True], [True, False]]
            >>> cert.num_samples.tolist()[0] < 100  # 20,000 allowed, a few dozen needed
            True
        """
        from rsmooth.sequential import _certify_radius

        return _certify_radius(
            self,
            inputs,
            radius,
            alpha=alpha,
            max_n=max_n,
            n0=n0,
            beta=beta,
            growth=growth,
            candidates=candidates,
            generator=generator,
        )
