"""A context manager that leaves the user's model exactly as it found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from torch import nn

__all__ = ["preserve_model_state"]


@contextmanager
def preserve_model_state(
    model: nn.Module,
    *,
    train: bool | None = None,
    requires_grad: bool | None = None,
) -> Iterator[nn.Module]:
    """Temporarily set the mode and ``requires_grad`` of ``model``, then restore them.

    The ``training`` flag of *every* submodule and the ``requires_grad`` flag of every parameter
    are snapshotted and restored in ``finally``, so a call that raises leaves the model as found.
    When ``requires_grad=False`` the parameters are frozen, so no ``.grad`` is accumulated into
    them inside the block.

    Args:
        model: The user's model.
        train: ``True`` for ``model.train()``, ``False`` for ``model.eval()``, ``None`` to leave
            the mode unchanged.
        requires_grad: The value to give every parameter's ``requires_grad`` inside the block, or
            ``None`` to leave them unchanged.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        if train is not None:
            # torch.export modules refuse train()/eval(): their mode is fixed when exported
            with suppress(NotImplementedError):
                model.train(train)
        if requires_grad is not None:
            for param, _ in flags:
                param.requires_grad_(requires_grad)
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for param, flag in flags:
            param.requires_grad_(flag)
