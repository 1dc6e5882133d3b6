"""Error messages for the usual mistakes with a user's model, shared by the engine, criteria and attacks.

A model that fails is the user's code: its own message is kept whole (and the error chained), and
rsmooth adds what it knows about the call, e.g. that a 3-D batch may be one image without its batch
dimension. One place writes these messages, so that :class:`~rsmooth.SmoothedClassifier`, the
criteria, the attacks and the command line say the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["ANSI", "clean_message", "model_error", "output_type_message", "unbatched_hint"]

#: ANSI escape sequences (colours, cursor moves) that some libraries put into their messages.
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

_OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def clean_message(error: BaseException | str) -> str:
    r"""The text of an error or message without ANSI escapes or surrounding whitespace.

    Example:
        >>> clean_message("\x1b[1mWeights only load failed.\x1b[0m ")
        'Weights only load failed.'
    """
    return ANSI.sub("", str(error)).strip()


def output_type_message(output: object) -> str:
    """The ``TypeError`` message for a model that returned something other than a logits tensor.

    Example:
        >>> output_type_message((1, 2)).startswith("model must return a tensor of logits")
        True
    """
    name = type(output).__name__
    if isinstance(output, (tuple, list)):
        how = "e.g. `return model(x)[0]` if the logits come first"
    elif isinstance(output, Mapping):
        key = '"logits"' if "logits" in output else "the logits' key"
        how = f"e.g. `return model(x)[{key}]`"
    elif isinstance(getattr(output, "logits", None), Tensor):
        how = "e.g. `return model(x).logits` (Hugging Face-style outputs)"
    else:
        how = "a tensor of logits"
    return (
        f"model must return a tensor of logits [N, num_classes], got a {name}; wrap it in a "
        f"module whose forward returns the logits, {how} (docs: how-to 'Certify a dataset', "
        "'Models that do not return logits')"
    )


def unbatched_hint(inputs: Tensor) -> str:
    """A sentence for inputs that may be one image ``[C, H, W]`` without the batch dimension.

    Empty unless ``inputs`` is 3-D: rsmooth reads every tensor as a batch ``[B, *]``.

    Example:
        >>> unbatched_hint(torch.zeros(3, 32, 32))[:45]
        'inputs has shape (3, 32, 32), read as a batch'
        >>> unbatched_hint(torch.zeros(1, 3, 32, 32))
        ''
    """
    if inputs.dim() != 3:
        return ""
    return (
        f"inputs has shape {tuple(inputs.shape)}, read as a batch of {inputs.shape[0]} inputs of "
        f"shape {tuple(inputs.shape[1:])}: if it is one image [C, H, W], add the batch dimension "
        "with inputs.unsqueeze(0)"
    )


def model_error(error: BaseException, inputs: Tensor) -> ValueError | None:
    """A ``ValueError`` that explains why the user's model failed on ``inputs``, or None.

    Whatever the model raised, a 3-D ``inputs`` gets the :func:`unbatched_hint` (the model's own
    message, which may name an internal batch of noisy copies, follows in full). A
    :mod:`torch.export` program exported with a fixed batch size gets the export fix. Out of
    memory, interrupts and every other case return None: re-raise the error unchanged.

    Example:
        >>> error = RuntimeError("expected 4D input (got 3D input)")
        >>> str(model_error(error, torch.zeros(3, 8, 8))).split(":")[0]
        'inputs has shape (3, 8, 8), read as a batch of 3 inputs of shape (8, 8)'
        >>> model_error(error, torch.zeros(2, 3, 8, 8)) is None
        True
    """
    if isinstance(error, _OutOfMemoryError) or not isinstance(error, Exception):
        return None
    text = clean_message(error) or type(error).__name__
    if "Guard failed" in text or ".size()[0]" in text:
        return ValueError(
            "the model (a torch.export program?) was exported with a fixed batch size, but "
            "rsmooth feeds it batches of other sizes; export it with a dynamic batch dimension, "
            "e.g. torch.export.export(model, (x,), dynamic_shapes=({0: "
            f"torch.export.Dim('batch')}},)) (the model raised {type(error).__name__}: {text})"
        )
    hint = unbatched_hint(inputs)
    if not hint:
        return None
    return ValueError(f"{hint} (the model raised {type(error).__name__}: {text})")
