"""What the commands share: the user-error exceptions and importing ``module:name`` specs."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["EXPORT_HINT", "CommandError", "Terminated", "import_object"]

#: How to export a model with a dynamic batch dimension, for the errors of a fixed-batch export.
EXPORT_HINT = (
    "export it with a dynamic batch dimension, e.g. torch.export.export(model, (x,), "
    'dynamic_shapes=({0: torch.export.Dim("batch")},)) (rsmooth feeds batches of '
    "--batch-size noisy copies and a smaller last batch)"
)


class CommandError(Exception):
    """A user error: printed as one message (no traceback), exit status 2."""


class Terminated(Exception):
    """``certify`` was stopped by a signal (exit status 128 + the signal number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def import_object(spec: str, option: str) -> Any:
    """The callable named by ``package.module:name`` (the current folder is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CommandError(f"{option} must be package.module:name, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise CommandError(f"{option}: cannot import {module_name!r}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"{option}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f"{option}: {spec!r} is not callable")
    return target
