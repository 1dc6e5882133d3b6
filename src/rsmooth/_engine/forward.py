"""The forward runner: the user's model on a batch of noisy rows, as the settings ask.

It owns what happens between a filled batch and its checked logits: the batch's memory layout
(``memory_format``), the compiled model (``compile``), :func:`torch.autocast` (``autocast``), the
checks of the model's output (a logits tensor ``[N, K]``, ``K`` as expected) and the hints for
the usual mistakes (:mod:`rsmooth._hints`). The model itself always runs as written: rsmooth
never replaces it by a copy.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rsmooth._hints import model_error, output_type_message, unbatched_hint
from rsmooth._model_state import preserve_model_state

__all__ = ["OUT_OF_MEMORY", "ForwardRunner", "caller_stacklevel", "channels_last_format"]

OUT_OF_MEMORY: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

#: The layout check runs the model on at most this many clean inputs, in both layouts.
CHECK_ROWS = 32
#: How far apart the two layouts' logits may be, relative to the largest logit: rounding, not a
#: different answer (a model that reads its input's raw memory differs by far more).
_CHECK_RTOL = {torch.float64: 1e-6, torch.float32: 1e-3}
#: float16, bfloat16 and autocast: bfloat16 rounds each op by up to 2**-8, which adds up over a
#: deep network's layers differently in each layout.
_CHECK_RTOL_REDUCED = 0.1

_Key = tuple[tuple[int, ...], torch.dtype, str]


def caller_stacklevel() -> int:
    """``stacklevel`` for a warning issued here that points at the first frame outside rsmooth."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1  # the frame that calls warnings.warn
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package
    ):
        frame, level = frame.f_back, level + 1
    return level


def channels_last_format(inputs: Tensor) -> torch.memory_format:
    """The channels-last layout for 4-D (``channels_last``) or 5-D inputs (its 3-D form)."""
    if inputs.dim() == 4:
        return torch.channels_last
    if inputs.dim() == 5:
        return torch.channels_last_3d
    raise ValueError(
        "memory_format='channels_last' needs 4-D [B, C, H, W] or 5-D [B, C, D, H, W] inputs, got "
        f"shape {tuple(inputs.shape)}; pass memory_format='auto' or 'preserve'"
    )


def _own_format(inputs: Tensor) -> torch.memory_format | None:
    """``channels_last`` (or its 3-D form) when the inputs use it, else None."""
    if inputs.is_contiguous():
        return None
    if inputs.dim() == 4 and inputs.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if inputs.dim() == 5 and inputs.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


class ForwardRunner:
    """Runs the user's model on noisy batches and checks what it returns.

    Args:
        model: The base classifier, run as written.
        num_classes: The expected number of logits, or None to accept the model's.
        compiled: The :func:`torch.compile` d model, or None.
        autocast: ``torch.bfloat16``/``torch.float16`` to run under :func:`torch.autocast`, or None.
        memory_format: ``"auto"``, ``"preserve"`` or ``"channels_last"`` (see
            :class:`~rsmooth.SmoothedClassifier`).
        check_size: The most rows per forward pass of the layout check (an integer batch size),
            so that the check's outcome does not depend on a timed choice.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int | None = None,
        compiled: Callable[[Tensor], object] | None = None,
        autocast: torch.dtype | None = None,
        memory_format: str = "auto",
        check_size: int | None = None,
    ) -> None:
        self.model = model
        self.num_classes = num_classes
        self.compiled = compiled
        self.autocast = autocast
        self.memory_format = memory_format
        self.check_size = check_size
        #: memory_format="auto": whether inputs of each shape, dtype and device run channels_last
        self.layouts: dict[_Key, bool] = {}
        self._autocast_checked: set[str] = set()

    # ------------------------------------------------------------------ layout
    def layout(self, probe: Tensor) -> torch.memory_format | None:
        """The layout of forward batches for inputs like ``probe`` (None: the standard one).

        ``probe`` is a batch of clean inputs; with ``memory_format="auto"`` its first rows decide,
        once per input shape, dtype and device, whether the model gets ``channels_last``.
        """
        own = _own_format(probe)
        if self.memory_format == "channels_last":
            return channels_last_format(probe)
        if (
            self.memory_format == "preserve"
            or own is not None
            or probe.dim() != 4
            or probe.device.type != "cpu"
            or not probe.is_floating_point()
        ):
            return own
        key = (tuple(probe.shape[1:]), probe.dtype, str(probe.device))
        if key not in self.layouts:
            self.layouts[key] = self._accepts_channels_last(probe)
        return torch.channels_last if self.layouts[key] else None

    def _accepts_channels_last(self, probe: Tensor) -> bool:
        """Whether the model runs on ``channels_last`` rows of ``probe`` with the same logits.

        A model that fails on that layout (a ``view`` of its input, say) keeps the standard one.
        One whose logits differ beyond rounding keeps it too, with a ``RuntimeWarning``, unless it
        also differs from itself on the same inputs in the same layout (a random model, e.g.
        dropout left on: no layout check can tell, so nothing is said).
        """
        rows = probe[:CHECK_ROWS].contiguous()
        with preserve_model_state(self.model, train=False), torch.inference_mode():
            standard = self._check_forward(rows, None)
            try:
                other = self._check_forward(rows, torch.channels_last)
            except OUT_OF_MEMORY:
                raise
            except Exception:  # any failure means: keep the standard layout
                return False
            reduced = self.autocast is not None or standard.dtype not in _CHECK_RTOL
            difference = _logit_difference(standard, other, reduced=reduced)
            if difference is None:
                return True
            if _logit_difference(standard, self._check_forward(rows, None), reduced=reduced):
                return False  # random outputs: the layouts cannot be compared
        warnings.warn(
            "the model's logits on channels_last inputs differ from those on the same inputs in "
            f"the standard layout (largest difference {difference:.3g}), beyond rounding: it "
            "reads its input's raw memory somewhere. rsmooth feeds it the standard layout; pass "
            "memory_format='preserve' to skip this check",
            RuntimeWarning,
            stacklevel=caller_stacklevel(),
        )
        return False

    def _check_forward(self, rows: Tensor, memory_format: torch.memory_format | None) -> Tensor:
        """The model's logits on the clean ``rows``, in pieces of at most ``check_size``."""
        size = rows.shape[0] if self.check_size is None else self.check_size
        pieces = []
        for piece in rows.split(size):
            if memory_format is not None:
                piece = piece.clone(memory_format=memory_format)
            pieces.append(self.logits(piece, rows))
        return torch.cat(pieces)

    # ------------------------------------------------------------------ running
    def check_device(self, device: torch.device) -> None:
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

    def logits(self, batch: Tensor, inputs: Tensor, *, compiled: bool = False) -> Tensor:
        """The checked logits ``[N, K]`` of the model (or its compiled form) on ``batch``.

        ``inputs`` are the user's inputs, for the hints of an error. A model that raises gets a
        ``ValueError`` with a hint when rsmooth knows the likely cause (:func:`model_error`);
        otherwise its error propagates unchanged.
        """
        model = self.compiled if compiled and self.compiled is not None else self.model
        context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.autocast is not None:
            context = torch.autocast(device_type=batch.device.type, dtype=self.autocast)
        try:
            with context:
                logits = model(batch)
        except OUT_OF_MEMORY:
            raise
        except Exception as error:
            hinted = model_error(error, inputs)
            if hinted is None:
                raise
            raise hinted from error
        return self._check_logits(logits, batch.shape[0], inputs)

    def _check_logits(self, logits: object, rows: int, inputs: Tensor) -> Tensor:
        if not isinstance(logits, Tensor):
            raise TypeError(output_type_message(logits))
        if logits.dim() != 2 or logits.shape[0] != rows:
            hint = unbatched_hint(inputs)
            raise ValueError(
                f"model must return logits of shape [N, num_classes] for N inputs, got shape "
                f"{tuple(logits.shape)} for N={rows}" + (f"; {hint}" if hint else "")
            )
        classes = int(logits.shape[1])
        if self.num_classes is not None and classes != self.num_classes:
            raise ValueError(
                f"num_classes is {self.num_classes} but the model returned {classes} logits"
            )
        if classes < 2:
            raise ValueError(f"the model must return at least 2 logits, got {classes}")
        return logits


def _logit_difference(expected: Tensor, got: Tensor, *, reduced: bool) -> float | None:
    """None when ``got`` equals ``expected`` (logits) up to rounding, else how far apart.

    NaN and inf must sit at the same places; finite values may differ by a small fraction of the
    largest one (a larger fraction when ``reduced``: under autocast or in a half-precision dtype).
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


def compile_model(model: nn.Module, options: bool | Mapping[str, Any]) -> Callable[..., Any] | None:
    """:func:`torch.compile` of ``model`` with fixed shapes, or None when ``options`` is False."""
    if options is False:
        return None
    extra = {} if options is True else dict(options)
    return torch.compile(model, dynamic=False, **extra)
