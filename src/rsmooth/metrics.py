r"""Certified accuracy, average certified radius (ACR) and results files.

Definitions (as in the papers and the reference ``analyze.py``), over **all** rows, so that
abstentions and wrong predictions count as 0:

- approximate certified accuracy at radius :math:`r`:
  :math:`\frac1N\sum_i \mathbb{1}[\hat y_i = y_i \wedge R_i \ge r]` (inclusive);
- ACR: :math:`\frac1N\sum_i R_i\,\mathbb{1}[\hat y_i = y_i]`.

Both accept a :class:`~rsmooth.Certificate` with labels, or the
:class:`~rsmooth.results.CertificationResults` read from a tab-separated results file
(``idx label predict radius correct time``, as written by every randomized-smoothing codebase).

Every result knows its kind (:mod:`rsmooth.certificates`). A grid result (a
:class:`~rsmooth.RadiusCertificate`, or a file of ``rsmooth certify --radii``) has decisions at its
grid radii only: certified accuracy is computed at those radii and refused elsewhere, and ACR is
refused (its radii are lower bounds from inputs that stopped early, not comparable with CERTIFY's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from rsmooth._validation import check_nonnegative
from rsmooth.certificates import CERTIFIED, Certificate, RadiusCertificate
from rsmooth.results import CertificationResults, read_results

__all__ = [
    "DEFAULT_RADII",
    "CertificationResults",
    "average_certified_radius",
    "certified_accuracy",
    "correct_and_radius",
    "default_radii",
    "format_table",
    "read_results",
]

#: Radii reported by default for CERTIFY results: 0, 0.25, ..., 2.0.
DEFAULT_RADII: tuple[float, ...] = tuple(0.25 * i for i in range(9))

_NOT_FOR_GRIDS = (
    "each input stopped as soon as every grid radius was decided, so its radius is only a lower "
    "bound, not comparable with CERTIFY's; use SmoothedClassifier.certify (rsmooth certify "
    "without --radii) for ACR and radius curves"
)


class _HasPredictionAndRadius(Protocol):
    @property
    def prediction(self) -> Tensor: ...

    @property
    def radius(self) -> Tensor: ...


Result = _HasPredictionAndRadius | Certificate | RadiusCertificate | CertificationResults


def _kind(cert: Any) -> str:
    return str(getattr(cert, "kind", "certify"))


def _grid(cert: Any) -> tuple[float, ...]:
    return tuple(cert.radii)


def _correct(cert: Any, targets: Tensor | None) -> Tensor:
    if not (hasattr(cert, "prediction") and hasattr(cert, "radius")):
        raise TypeError(
            "cert must be a Certificate, RadiusCertificate or CertificationResults (with "
            f"prediction and radius), got {type(cert).__name__}"
        )
    prediction = cert.prediction.detach().cpu()
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
    return correct & (prediction >= 0)


def correct_and_radius(cert: Result, targets: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per input: whether the certified prediction is correct, and its radius (CERTIFY only).

    What :func:`certified_accuracy` and :func:`average_certified_radius` average over, for a
    CERTIFY result (a :class:`~rsmooth.Certificate` with ``targets``, or a CERTIFY file).

    Raises:
        ValueError: ``cert`` is a grid result (its radii are decisions at the grid only).

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, -1]), radius=torch.tensor([0.3, 0.0]),
        ...     p_lower=torch.zeros(2), count=torch.zeros(2), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> correct, radius = correct_and_radius(cert, torch.tensor([1, 1]))
        >>> correct.tolist(), radius.tolist()
        ([True, False], [0.30000001192092896, 0.0])
    """
    if _kind(cert) == "grid":
        raise ValueError(
            "radius curves need a CERTIFY result, got grid results (certify_radius) with "
            f"decisions at the radii {list(_grid(cert))} only: " + _NOT_FOR_GRIDS
        )
    correct = _correct(cert, targets)
    return correct, cert.radius.detach().cpu().to(torch.float64)


def _grid_accuracy(cert: Any, targets: Tensor | None, radii: Sequence[float]) -> Tensor:
    grid = _grid(cert)
    outside = [float(r) for r in radii if float(r) not in grid]
    if outside:
        raise ValueError(
            f"radii {outside} are not on the grid {list(grid)} of these results: sequential "
            "(certify_radius) results are decided at their grid radii only (a radius between "
            "them was never tested); use SmoothedClassifier.certify (CERTIFY) for other radii"
        )
    correct = _correct(cert, targets)
    status = cert.status.detach().cpu()
    columns = [grid.index(float(r)) for r in radii]
    return torch.stack([(correct & (status[:, j] == CERTIFIED)).double().mean() for j in columns])


def certified_accuracy(
    cert: Result, targets: Tensor | None = None, radii: Sequence[float] | None = None
) -> Tensor:
    """Approximate certified accuracy at each radius: the fraction of all rows correct with radius ≥ r.

    Args:
        cert: A :class:`~rsmooth.Certificate` or :class:`~rsmooth.RadiusCertificate` (with
            ``targets``), or :class:`~rsmooth.results.CertificationResults`.
        targets: True labels ``[N]``; optional for :class:`~rsmooth.results.CertificationResults`
            (its ``correct`` column is used).
        radii: Radii ``r >= 0``. Default: 0, 0.25, ..., 2.0 for CERTIFY results; the grid for
            grid results, which accept only their grid radii.

    Returns:
        ``float64`` tensor of fractions, one per radius.

    Raises:
        ValueError: A radius is negative, or not on a grid result's grid.

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0, -1, 2]), radius=torch.tensor([0.3, 0.8, 0.0, 0.5]),
        ...     p_lower=torch.zeros(4), count=torch.zeros(4), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> certified_accuracy(cert, torch.tensor([1, 0, 1, 1]), radii=[0.0, 0.5]).tolist()
        [0.5, 0.25]
    """
    grid = _kind(cert) == "grid"
    if radii is None:
        radii = _grid(cert) if grid else DEFAULT_RADII
    values = [check_nonnegative("radii", r) for r in radii]
    if grid:
        return _grid_accuracy(cert, targets, values)
    correct, radius = correct_and_radius(cert, targets)
    return torch.stack([(correct & (radius >= r)).double().mean() for r in values])


def average_certified_radius(cert: Result, targets: Tensor | None = None) -> float:
    """Average certified radius (ACR): the mean over all rows of ``radius * correct``.

    Args:
        cert: A :class:`~rsmooth.Certificate` (with ``targets``) or a CERTIFY
            :class:`~rsmooth.results.CertificationResults`.
        targets: True labels ``[N]``; optional for :class:`~rsmooth.results.CertificationResults`.

    Returns:
        The ACR as a float.

    Raises:
        ValueError: ``cert`` is a grid result (``certify_radius``, ``rsmooth certify --radii``).

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0, -1, 2]), radius=torch.tensor([0.3, 0.8, 0.0, 0.5]),
        ...     p_lower=torch.zeros(4), count=torch.zeros(4), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> round(average_certified_radius(cert, torch.tensor([1, 0, 1, 1])), 3)
        0.275
    """
    if _kind(cert) == "grid":
        raise ValueError("no ACR for grid results (certify_radius): " + _NOT_FOR_GRIDS)
    correct, radius = correct_and_radius(cert, targets)
    return float((radius * correct).mean())


def _radius_cap(cert: Any) -> float | None:
    """The largest radius a CERTIFY result can hold, when its settings are known."""
    settings = getattr(cert, "settings", None)
    if settings is not None:
        return settings.radius_cap
    if isinstance(cert, Certificate):
        from rsmooth.stats import max_certified_radius

        return max_certified_radius(cert.n, cert.alpha, cert.sigma)
    return None


def default_radii(results: Mapping[str, Result]) -> list[float]:
    """The radii a table of ``results`` shows by default (``rsmooth report``, ``rsmooth certify``).

    Grid results: their grid (all grids must agree). CERTIFY results only: 0, 0.25, ..., 2.0,
    stopping at the largest radius cap of the runs when every run's cap is known (a column
    past every cap would be 0% by construction).

    Raises:
        ValueError: Grid results with different grids.

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1]), radius=torch.tensor([0.3]), p_lower=torch.zeros(1),
        ...     count=torch.zeros(1), n=200, n0=10, alpha=0.001, sigma=0.5)
        >>> default_radii({"run": cert})  # the cap at n=200 is 0.91
        [0.0, 0.25, 0.5, 0.75]
    """
    grids = {_grid(cert) for cert in results.values() if _kind(cert) == "grid"}
    if len(grids) > 1:
        raise ValueError(
            f"grid results with different grid radii {sorted(grids)}: report them separately"
        )
    if grids:
        return list(next(iter(grids)))
    caps = [_radius_cap(cert) for cert in results.values()]
    known = [cap for cap in caps if cap is not None]
    if caps and len(known) == len(caps):
        return [r for r in DEFAULT_RADII if r <= max(known)] or [0.0]
    return list(DEFAULT_RADII)


def format_table(
    results: Mapping[str, Result],
    radii: Sequence[float] | None = None,
    *,
    targets: Mapping[str, Tensor] | None = None,
    fmt: Literal["markdown", "csv", "text"] = "markdown",
) -> str:
    """A table of ACR and certified accuracy (%) at ``radii``, one row per named result.

    The ACR column is shown when every result is a CERTIFY result; with grid results the radii
    must be on their grid.

    Args:
        results: Named certificates or results files' contents, in display order.
        radii: Radii for the accuracy columns. Default: :func:`default_radii`.
        targets: Labels per name, for certificate entries.
        fmt: ``"markdown"`` (GitHub table), ``"csv"`` or ``"text"`` (aligned columns).

    Returns:
        The table as a string (no trailing newline).

    Example:
        >>> from rsmooth import Certificate
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0]), radius=torch.tensor([0.3, 0.8]),
        ...     p_lower=torch.zeros(2), count=torch.zeros(2), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> print(format_table({"run": cert}, [0.0, 0.5], targets={"run": torch.tensor([1, 0])}))
        | model | inputs | ACR | r=0.00 | r=0.50 |
        |---|---|---|---|---|
        | run | 2 | 0.550 | 100.0 | 50.0 |
    """
    if fmt not in ("markdown", "csv", "text"):
        raise ValueError(f"fmt must be 'markdown', 'csv' or 'text', got {fmt!r}")
    if not results:
        raise ValueError("results must name at least one result, got none")
    if radii is None:
        radii = default_radii(results)
    show_acr = all(_kind(cert) != "grid" for cert in results.values())
    header = ["model", "inputs"] + (["ACR"] if show_acr else [])
    header += [f"r={float(r):.2f}" for r in radii]
    rows = []
    for name, cert in results.items():
        labels = None if targets is None else targets.get(name)
        accuracy = certified_accuracy(cert, labels, radii)
        row = [str(name), str(len(cert.prediction))]
        if show_acr:
            row.append(f"{average_certified_radius(cert, labels):.3f}")
        rows.append(row + [f"{100 * float(a):.1f}" for a in accuracy])
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
