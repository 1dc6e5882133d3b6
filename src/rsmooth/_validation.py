"""Argument checks shared by every public entry point.

Each helper raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value,
with one message shape: ``"<name> must be <what>, got <value>"``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_INPUT_RANGE",
    "check_base_model",
    "check_bool",
    "check_choice",
    "check_epsilon_in_box",
    "check_generator",
    "check_generator_arg",
    "check_input_range",
    "check_input_range_arg",
    "check_inputs",
    "check_int",
    "check_model",
    "check_nonnegative",
    "check_open_unit",
    "check_positive",
    "check_radii",
    "check_real",
    "check_targets",
    "optional",
]


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_real(name: str, value: Any) -> float:
    """Return ``value`` as a finite float, or raise ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_type_name(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float after checking it is finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_type_name(value)}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """Return ``value`` as a float after checking it is finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_type_name(value)}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return value


def check_open_unit(name: str, value: Any) -> float:
    """Return ``value`` as a float after checking 0 < value < 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_type_name(value)}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value}")
    return value


def check_int(name: str, value: Any, *, min: int = 1) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``min``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_type_name(value)}")
    value = int(value)
    if value < min:
        what = "a positive integer" if min == 1 else f"an integer >= {min}"
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def check_model(model: Any) -> torch.nn.Module:
    """Check that ``model`` is an ``nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {_type_name(model)}")
    return model


def check_inputs(name: str, inputs: Any, *, unit_box: bool = False) -> Tensor:
    """Check a batch of inputs: a floating tensor ``[B, *]`` with B >= 1, finite entries.

    With ``unit_box=True`` the entries must also lie in [0, 1] (attacks work in pixel space).
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(inputs)}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() < 1:
        raise ValueError(
            f"{name} must be a batch of shape [B, *], got a 0-d tensor; use inputs.unsqueeze(0)"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch, got shape {tuple(inputs.shape)}")
    if inputs.numel() == 0:
        raise ValueError(f"{name} must have at least one feature, got shape {tuple(inputs.shape)}")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError(f"{name} must be finite, got a tensor containing NaN or inf")
    if unit_box:
        check_input_range(name, inputs, DEFAULT_INPUT_RANGE, switch=None)
    return inputs


#: The input range checked by default: pixels scaled to [0, 1], the convention of the docs.
DEFAULT_INPUT_RANGE: tuple[float, float] = (0.0, 1.0)


def check_input_range_arg(name: str, value: Any) -> tuple[float, float] | None:
    """Check an ``input_range`` argument: ``None`` (no check) or a pair ``(low, high)``."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(
            f"{name} must be None or a pair (low, high), got {_type_name(value)} {value!r}"
        )
    low, high = check_real(f"{name}[0]", value[0]), check_real(f"{name}[1]", value[1])
    if not low < high:
        raise ValueError(f"{name} must be a pair (low, high) with low < high, got {value!r}")
    return (low, high)


def check_input_range(
    name: str,
    inputs: Tensor,
    input_range: tuple[float, float] | None,
    *,
    switch: str | None = "input_range=None",
) -> Tensor:
    """Check that every entry of ``inputs`` lies in ``input_range`` (``None``: no check).

    The error says what probably went wrong: 8-bit pixels that were not divided by 255, or a
    normalisation (mean/std) applied outside the model, and how to turn the check off
    (``switch``; ``None`` when the check cannot be turned off, e.g. attacks in pixel space).
    """
    if input_range is None:
        return inputs
    low, high = input_range
    smallest, largest = (float(v) for v in torch.aminmax(inputs.detach()))
    if low <= smallest and largest <= high:
        return inputs
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        raise ValueError(f"{name} must be finite, got a tensor containing NaN or inf")
    message = (
        f"{name} must lie in [{low:g}, {high:g}], got values in [{smallest:.4g}, {largest:.4g}]"
    )
    hints = []
    if largest > 10 * high > 0 and smallest >= 0 and largest <= 255:
        hints.append(
            "this looks like unnormalised 8-bit pixels in [0, 255]: divide by 255 "
            "(torchvision's ToTensor does)"
        )
    if smallest < low:
        hints.append(
            "negative values suggest a normalisation (mean/std) applied outside the model: "
            "make it the model's first layer, so that sigma is measured in pixel space"
        )
    if not hints:
        hints.append("check the preprocessing (augmentations or added noise can leave the range)")
    message += "; " + "; ".join(hints)
    if switch is not None:
        message += f". For inputs in another space, pass {switch} to turn this check off"
    else:
        message += " (this method works in pixel space and projects onto [0, 1])"
    raise ValueError(message)


def check_targets(name: str, targets: Any, batch_size: int, device: torch.device) -> Tensor:
    """Check integer class labels ``[B]`` matching a batch of ``batch_size`` inputs."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(targets)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got {targets.dtype}")
    if tuple(targets.shape) != (batch_size,):
        raise ValueError(
            f"{name} must have shape ({batch_size},) to match the inputs, "
            f"got {tuple(targets.shape)}"
        )
    if targets.device != device:
        raise ValueError(f"{name} must be on the inputs' device {device}, got {targets.device}")
    if batch_size and int(targets.min()) < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {int(targets.min())}")
    return targets


def check_generator(generator: Any, device: torch.device) -> torch.Generator | None:
    """Check an optional ``torch.Generator`` lives on ``device``."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {_type_name(generator)}")
    if generator.device.type != device.type:
        raise ValueError(
            f"generator must be on the inputs' device {device}, got a generator on "
            f"{generator.device}; create it with torch.Generator(device=inputs.device)"
        )
    return generator


def check_radii(radius: float | Sequence[float]) -> tuple[float, ...]:
    """Return a grid of radii as a sorted tuple of floats (one radius is a grid of one)."""
    if hasattr(radius, "tolist") and not isinstance(radius, (list, tuple)):
        radius = radius.tolist()
    values = [radius] if isinstance(radius, numbers.Real) else radius
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"radius must be a number or a sorted sequence of numbers, got {type(radius).__name__}"
        )
    radii = tuple(check_real("radius", r) for r in values)
    if not radii:
        raise ValueError("radius must name at least one radius, got an empty sequence")
    if any(r < 0 for r in radii):
        raise ValueError(f"radius must be non-negative, got {list(radii)}")
    if any(b <= a for a, b in itertools.pairwise(radii)):
        raise ValueError(
            f"radius must be sorted in increasing order without repeats, got {list(radii)}"
        )
    return radii


# ---------------------------------------------------------------------------- settings
# Checks with the ``check(name, value) -> value`` signature of :class:`rsmooth._settings.Setting`,
# for the criteria's and attacks' hyperparameters.

T = TypeVar("T")


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` after checking it is a ``bool`` (``0``/``1`` are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)}")
    return value


def check_choice(*choices: str) -> Callable[[str, Any], str]:
    """A check that accepts one of the strings ``choices``.

    Example:
        >>> check_choice("pgd", "ddn")("attack", "fgsm")
        Traceback (most recent call last):
        ...
        ValueError: attack must be 'pgd' or 'ddn', got 'fgsm'
    """
    if len(choices) == 2:
        listed = " or ".join(repr(c) for c in choices)
        kind = f"a str, {listed}"
    else:
        listed = "one of " + ", ".join(repr(c) for c in choices)
        kind = listed

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be {kind}, got {_type_name(value)}")
        if value not in choices:
            raise ValueError(f"{name} must be {listed}, got {value!r}")
        return value

    return check


def optional(check: Callable[[str, Any], T]) -> Callable[[str, Any], T | None]:
    """A check that accepts ``None`` and otherwise runs ``check``."""

    def check_or_none(name: str, value: Any) -> T | None:
        return None if value is None else check(name, value)

    return check_or_none


def check_generator_arg(name: str, value: Any) -> torch.Generator | None:
    """Return ``value`` after checking it is ``None`` or a ``torch.Generator``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {_type_name(value)}")
    return value


def check_base_model(model: Any) -> torch.nn.Module:
    """Check the base classifier given to a criterion, an attack or a dataset statistic.

    A :class:`~rsmooth.SmoothedClassifier` is not one: those add the noise themselves, so the
    message says to pass its ``model`` and ``sigma``.
    """
    smoothed = not isinstance(model, torch.nn.Module) and isinstance(
        getattr(model, "model", None), torch.nn.Module
    )
    if smoothed and hasattr(model, "sigma"):
        raise TypeError(
            "model must be the base classifier (a torch.nn.Module), got a SmoothedClassifier, "
            "which adds its own noise; rsmooth adds the noise here itself: pass smoothed.model, "
            "and sigma=smoothed.sigma (to the criterion's or attack's constructor)"
        )
    return check_model(model)


def check_epsilon_in_box(
    name: str, epsilon: float, inputs: Tensor, input_range: tuple[float, float] = (0.0, 1.0)
) -> float:
    """Check an L2 radius ``epsilon`` in input units against the diameter of the input box.

    No two points of ``[low, high]^d`` are further apart than ``sqrt(d) * (high - low)``, so a
    larger radius is certainly a slip, usually the research code's integer ``--epsilon`` flag
    (which its scripts divide by 256) passed as it is.
    """
    low, high = input_range
    dim = inputs[0].numel()
    diameter = math.sqrt(dim) * (high - low)
    if epsilon > diameter:
        raise ValueError(
            f"{name} must be at most the diameter of the input box [{low:g}, {high:g}]^{dim}, "
            f"sqrt({dim}) * {high - low:g} = {diameter:.4g}, got {epsilon:g}: {name} is an L2 "
            "radius in input units (pixels in [0, 1]), and no two inputs are further apart; "
            "the research code's integer --epsilon flag means flag/256 (64 -> 0.25, 127 -> "
            f"0.496, 255 -> 0.996, 512 -> 2.0), so for the flag {epsilon:g} pass "
            f"{name}={epsilon / 256:.6g}"
        )
    return epsilon
