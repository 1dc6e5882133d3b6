r"""Certified accuracy, average certified radius (ACR) and results files.

Definitions (as in the papers and the reference ``analyze.py``), over **all** rows, so that
abstentions and wrong predictions count as 0:

- approximate certified accuracy at radius :math:`r`:
  :math:`\frac1N\sum_i \mathbb{1}[\hat y_i = y_i \wedge R_i \ge r]` (inclusive);
- ACR: :math:`\frac1N\sum_i R_i\,\mathbb{1}[\hat y_i = y_i]`.

Both accept a :class:`~rsmooth.Certificate` with labels, or the
:class:`CertificationResults` read from a tab-separated results file
(``idx label predict radius correct time``, as written by every randomized-smoothing codebase).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from rsmooth._validation import check_nonnegative

__all__ = [
    "DEFAULT_RADII",
    "CertificationResults",
    "average_certified_radius",
    "certified_accuracy",
    "format_table",
    "read_results",
]

#: Radii reported by default: 0, 0.25, ..., 2.0.
DEFAULT_RADII: tuple[float, ...] = tuple(0.25 * i for i in range(9))

_REQUIRED_COLUMNS = ("idx", "label", "predict", "radius")


class _HasPredictionAndRadius(Protocol):
    @property
    def prediction(self) -> Tensor: ...

    @property
    def radius(self) -> Tensor: ...


@dataclass(frozen=True, eq=False, slots=True)
class CertificationResults:
    """Rows of a certification results file, as tensors of shape ``[N]`` on the CPU.

    Attributes:
        idx: Dataset index of each row.
        label: True class.
        prediction: Certified class, -1 for an abstention (column ``predict``).
        radius: Certified radius as written (3 significant digits in the reference format).
        correct: Whether the prediction was correct (column ``correct``, or ``predict == label``
            when the file has no such column).
        count: Votes for the selected class (``count`` column, written by rsmooth), or None.
        n: Estimation samples per row (``n`` column, written by rsmooth), or None.
        path: The file the rows were read from.
    """

    idx: Tensor
    label: Tensor
    prediction: Tensor
    radius: Tensor
    correct: Tensor
    count: Tensor | None = None
    n: Tensor | None = None
    path: str | None = None

    def __len__(self) -> int:
        return int(self.idx.shape[0])


def _parse(value: str, kind: type, path: str, line: int, column: str) -> float | int:
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: column {column!r} must be {kind.__name__}, got {value!r}"
        ) from None
    if kind is float and not math.isfinite(number):
        raise ValueError(f"{path}, line {line}: column {column!r} must be finite, got {value!r}")
    return number


def read_results(path: str | os.PathLike[str]) -> CertificationResults:
    r"""Read a tab-separated certification results file.

    The header must contain ``idx``, ``label``, ``predict`` and ``radius``; ``correct``,
    ``count``, ``n`` and ``time`` are optional and other columns are ignored, so files written
    by the reference codebases (Cohen et al., Salman et al., SmoothMix, ...) are read too.

    Args:
        path: The file.

    Returns:
        The rows as :class:`CertificationResults`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The header lacks a required column, or a row is malformed.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.tsv"
        >>> _ = f.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t0:00:01\n")
        >>> res = read_results(f)
        >>> len(res), res.radius.tolist()
        (1, [0.5])
    """
    name = os.fspath(path)
    with open(name, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            header = [column.strip() for column in next(reader)]
        except StopIteration:
            raise ValueError(f"{name}: the file is empty, expected a header line") from None
        missing = [column for column in _REQUIRED_COLUMNS if column not in header]
        if missing:
            raise ValueError(
                f"{name}: header must contain the columns {list(_REQUIRED_COLUMNS)}, "
                f"missing {missing} in {header}"
            )
        position = {column: header.index(column) for column in header}
        optional = [column for column in ("correct", "count", "n") if column in position]
        columns: dict[str, list[float | int]] = {c: [] for c in _REQUIRED_COLUMNS + tuple(optional)}
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise ValueError(
                    f"{name}, line {line}: expected {len(header)} tab-separated fields, "
                    f"got {len(row)}"
                )
            for column in columns:
                kind = float if column == "radius" else int
                columns[column].append(
                    _parse(row[position[column]].strip(), kind, name, line, column)
                )

    def long(column: str) -> Tensor:
        return torch.tensor(columns[column], dtype=torch.long)

    prediction, label = long("predict"), long("label")
    radius = torch.tensor(columns["radius"], dtype=torch.float64)
    if (radius < 0).any():
        raise ValueError(f"{name}: column 'radius' must be non-negative")
    correct = long("correct").bool() if "correct" in columns else prediction == label
    return CertificationResults(
        idx=long("idx"),
        label=label,
        prediction=prediction,
        radius=radius,
        correct=correct,
        count=long("count") if "count" in columns else None,
        n=long("n") if "n" in columns else None,
        path=name,
    )


def _correct_and_radius(
    cert: _HasPredictionAndRadius | CertificationResults, targets: Tensor | None
) -> tuple[Tensor, Tensor]:
    if not (hasattr(cert, "prediction") and hasattr(cert, "radius")):
        raise TypeError(
            "cert must be a Certificate or CertificationResults (with prediction and radius), "
            f"got {type(cert).__name__}"
        )
    prediction = cert.prediction.detach().cpu()
    radius = cert.radius.detach().cpu().to(torch.float64)
    if targets is None:
        if not isinstance(cert, CertificationResults):
            raise TypeError("targets are required unless cert is a CertificationResults")
        correct = cert.correct
    else:
        if not isinstance(targets, Tensor):
            raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        targets = targets.detach().cpu()
        if targets.shape != prediction.shape:
            raise ValueError(
                f"targets must have shape {tuple(prediction.shape)} to match the predictions, "
                f"got {tuple(targets.shape)}"
            )
        correct = prediction == targets
    if prediction.numel() == 0:
        raise ValueError("cert must hold at least one row, got 0")
    return correct & (prediction >= 0), radius


def certified_accuracy(
    cert: _HasPredictionAndRadius | CertificationResults,
    targets: Tensor | None = None,
    radii: Sequence[float] = DEFAULT_RADII,
) -> Tensor:
    """Approximate certified accuracy at each radius: the fraction of all rows correct with radius ≥ r.

    Args:
        cert: A :class:`~rsmooth.Certificate` or :class:`CertificationResults`.
        targets: True labels ``[N]``; optional for :class:`CertificationResults` (its ``correct``
            column is used).
        radii: Radii ``r >= 0``. Default: 0, 0.25, ..., 2.0.

    Returns:
        ``float64`` tensor of fractions, one per radius.

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0, -1, 2]), radius=torch.tensor([0.3, 0.8, 0.0, 0.5]),
        ...     p_lower=torch.zeros(4), count=torch.zeros(4), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> certified_accuracy(cert, torch.tensor([1, 0, 1, 1]), radii=[0.0, 0.5]).tolist()
        [0.5, 0.25]
    """
    correct, radius = _correct_and_radius(cert, targets)
    values = [check_nonnegative("radii", r) for r in radii]
    return torch.stack([(correct & (radius >= r)).double().mean() for r in values])


def average_certified_radius(
    cert: _HasPredictionAndRadius | CertificationResults, targets: Tensor | None = None
) -> float:
    """Average certified radius (ACR): the mean over all rows of ``radius * correct``.

    Args:
        cert: A :class:`~rsmooth.Certificate` or :class:`CertificationResults`.
        targets: True labels ``[N]``; optional for :class:`CertificationResults`.

    Returns:
        The ACR as a float.

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0, -1, 2]), radius=torch.tensor([0.3, 0.8, 0.0, 0.5]),
        ...     p_lower=torch.zeros(4), count=torch.zeros(4), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> round(average_certified_radius(cert, torch.tensor([1, 0, 1, 1])), 3)
        0.275
    """
    correct, radius = _correct_and_radius(cert, targets)
    return float((radius * correct).mean())


def format_table(
    results: Mapping[str, _HasPredictionAndRadius | CertificationResults],
    radii: Sequence[float] = DEFAULT_RADII,
    *,
    targets: Mapping[str, Tensor] | None = None,
    fmt: Literal["markdown", "csv", "text"] = "markdown",
) -> str:
    """A table of ACR and certified accuracy (%) at ``radii``, one row per named result.

    Args:
        results: Named certificates or results files' contents, in display order.
        radii: Radii for the accuracy columns.
        targets: Labels per name, for :class:`~rsmooth.Certificate` entries.
        fmt: ``"markdown"`` (GitHub table), ``"csv"`` or ``"text"`` (aligned columns).

    Returns:
        The table as a string (no trailing newline).

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0]), radius=torch.tensor([0.3, 0.8]),
        ...     p_lower=torch.zeros(2), count=torch.zeros(2), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> print(format_table({"run": cert}, [0.0, 0.5], targets={"run": torch.tensor([1, 0])}))
        | model | N | ACR | r=0.00 | r=0.50 |
        |---|---|---|---|---|
        | run | 2 | 0.550 | 100.0 | 50.0 |
    """
    if fmt not in ("markdown", "csv", "text"):
        raise ValueError(f"fmt must be 'markdown', 'csv' or 'text', got {fmt!r}")
    if not results:
        raise ValueError("results must name at least one result, got none")
    header = ["model", "N", "ACR"] + [f"r={float(r):.2f}" for r in radii]
    rows = []
    for name, cert in results.items():
        labels = None if targets is None else targets.get(name)
        accuracy = certified_accuracy(cert, labels, radii)
        acr = average_certified_radius(cert, labels)
        rows.append(
            [name, str(len(cert.prediction)), f"{acr:.3f}"]
            + [f"{100 * float(a):.1f}" for a in accuracy]
        )
    if fmt == "csv":
        return "\n".join(",".join(row) for row in [header, *rows])
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    )
