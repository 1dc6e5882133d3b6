"""The ``rsmooth`` command line: ``certify``, ``report``, ``plan`` and ``merge``.

Run ``rsmooth --help`` or ``rsmooth COMMAND --help`` (also ``python -m rsmooth``). Errors in the
arguments or the files give a message on stderr (no traceback) and exit status 2; set
``RSMOOTH_DEBUG=1`` to get the full traceback instead. An interrupted ``certify`` exits with
128 + the signal number after writing its finished rows.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from rsmooth.cli._common import EXPORT_HINT, CommandError, Terminated
from rsmooth.cli._parser import build_parser

__all__ = ["build_parser", "main"]

#: The module and function of each command, imported only when it runs.
_COMMANDS = {
    "certify": ("rsmooth.cli._certify", "certify"),
    "report": ("rsmooth.cli._report", "report"),
    "plan": ("rsmooth.cli._report", "plan"),
    "merge": ("rsmooth.cli._report", "merge"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rsmooth`` command line; returns the exit status.

    Run as the ``rsmooth`` program (``argv`` left out: the process's own command line, as the
    console script and ``python -m rsmooth`` call it), ``certify`` first calls
    :func:`rsmooth.allocator.keep_freed_memory`, since the process is the command's own. Called
    with an explicit ``argv`` from Python, it leaves the caller's allocator alone.

    Args:
        argv: Arguments without the program name. Default: ``sys.argv[1:]``.

    Returns:
        0 on success, 2 for a usage or input error (one message on stderr), 128 + the signal
        number when ``certify`` was stopped by ``SIGTERM`` or ``SIGINT`` (finished rows are
        kept; rerun to resume).

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        rsmooth ...
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if argv is None and args.command == "certify":
        from rsmooth.allocator import keep_freed_memory

        keep_freed_memory()
    prog = f"rsmooth {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = functools.partial(_show_warning, prog)
        return _run_command(args, prog)


def _show_warning(
    prog: str,
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Print a warning as the command's own message, not as a line of rsmooth's source."""
    text = _clean(message)
    print(f"{prog}: warning: {text} ({category.__name__})", file=sys.stderr)


def _run_command(args: argparse.Namespace, prog: str) -> int:
    try:
        module, function = _COMMANDS[args.handler]
        return int(getattr(importlib.import_module(module), function)(args))
    except Terminated as stop:
        print(
            f"{prog}: stopped by signal {stop.signum} after writing the finished rows; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted after writing the finished rows; rerun the same command to resume",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT
    except (
        CommandError,
        ValueError,
        TypeError,
        OSError,
        ImportError,
        RuntimeError,
        AssertionError,
    ) as error:
        if os.environ.get("RSMOOTH_DEBUG") == "1":
            raise
        text = _clean(error) or type(error).__name__
        if isinstance(error, AssertionError):
            if "Guard failed" not in text:
                raise  # a bug, not a user error: keep the traceback
            text = (
                f"the --model program refused the input shape ({text}); if it is a "
                f"torch.export file with a fixed batch size, {EXPORT_HINT}"
            )
        if isinstance(error, FileNotFoundError) and error.filename and "\n" not in text:
            text = f"no such file: {error.filename}" if "No such file" in text else text
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 2


def _clean(error: object) -> str:
    from rsmooth._hints import clean_message

    return clean_message(str(error))
