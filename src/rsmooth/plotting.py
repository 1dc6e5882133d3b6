r"""Certified-accuracy-vs-radius figures (needs matplotlib: ``pip install 'rsmooth[plot]'``).

The standard figure of the randomized-smoothing papers :cite:`cohen2019certified`: for each run,
the approximate certified accuracy over its M inputs,
:math:`\frac{1}{M}\sum_{i=1}^{M} \mathbb{1}[\hat y_i = y_i \wedge R_i \ge r]`, as a function of
the radius :math:`r`, a decreasing step curve (drawn in percent, as in the tables).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from rsmooth._validation import check_int, check_positive
from rsmooth.metrics import correct_and_radius
from rsmooth.stats import max_certified_radius

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["certified_accuracy_curve", "plot_certified_accuracy", "save_figure"]

_INSTALL_HINT = "plotting needs matplotlib; install it with: pip install 'rsmooth[plot]'"


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return matplotlib


def certified_accuracy_curve(
    cert: Any, targets: Tensor | None = None, radii: Any = None, *, num_points: int = 1001
) -> tuple[np.ndarray, np.ndarray]:
    """Certified accuracy on a fine grid of radii (the data behind the plot; no matplotlib).

    Args:
        cert: A :class:`~rsmooth.Certificate` (with ``targets``) or
            :class:`~rsmooth.metrics.CertificationResults`.
        targets: True labels ``[N]`` for a :class:`~rsmooth.Certificate`.
        radii: Radii to evaluate at. Default: ``num_points`` points from 0 to the largest radius.
        num_points: Grid size when ``radii`` is not given. Default: 1001.

    Returns:
        ``(radii, accuracy)``: two ``float64`` arrays of the same length; accuracy in [0, 1].

    Example:
        >>> from rsmooth import Certificate
        >>> import torch
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0]), radius=torch.tensor([0.3, 0.8]),
        ...     p_lower=torch.zeros(2), count=torch.zeros(2), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> r, acc = certified_accuracy_curve(cert, torch.tensor([1, 0]), radii=[0.0, 0.5, 1.0])
        >>> acc.tolist()
        [1.0, 0.5, 0.0]
    """
    correct, radius = correct_and_radius(cert, targets)
    certified = np.sort(radius[correct].numpy())
    total = len(correct)
    if radii is None:
        num_points = check_int("num_points", num_points, min=2)
        top = float(certified[-1]) if certified.size else 0.0
        grid = np.linspace(0.0, top if top > 0 else 1.0, num_points)
    else:
        grid = np.asarray(radii, dtype=np.float64)
        if grid.ndim != 1 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise ValueError("radii must be a 1-d sequence of non-negative finite numbers")
    # rows with radius >= r: inclusive, as in certified_accuracy
    above = certified.size - np.searchsorted(certified, grid, side="left")
    return grid, above / total


def plot_certified_accuracy(
    results: Mapping[str, Any],
    *,
    targets: Mapping[str, Tensor] | None = None,
    ax: Axes | None = None,
    max_radius: float | None = None,
    num_points: int = 1001,
    title: str | None = None,
    radius_caps: Mapping[str, float] | None = None,
    show_caps: bool = True,
) -> Axes:
    r"""Plot certified accuracy against radius, one step curve per named run.

    Each run's **radius cap** :math:`\sigma\,\Phi^{-1}(\alpha^{1/n})`, the largest radius
    CERTIFY can report with n noise samples at level alpha, is marked by a dashed vertical line in the
    run's colour (one grey line for runs that share it), labelled in the legend: it explains the
    cliff at the right end of every curve (no input can be certified beyond it, however robust
    the model). The cap is known for a
    :class:`~rsmooth.Certificate` (its ``sigma``, ``n`` and ``alpha``) and for results files
    written by rsmooth (their ``.json`` sidecar); give it in ``radius_caps`` for other files
    (e.g. :func:`~rsmooth.stats.max_certified_radius` ``(100_000, 0.001, sigma)`` for the
    released logs of the papers).

    Args:
        results: Named :class:`~rsmooth.metrics.CertificationResults` (or certificates, with
            ``targets``), in legend order; the names become the line labels.
        targets: Labels per name, for :class:`~rsmooth.Certificate` entries.
        ax: Axes to draw into. Default: a new ``matplotlib.figure.Figure`` (no pyplot, so no
            display is needed).
        max_radius: Right end of the radius axis. Default: a little past the largest radius.
        num_points: Points of the radius grid. Default: 1001.
        title: Optional title.
        radius_caps: Radius cap per name, overriding the one read from the run (the others are
            still read). Default: none given.
        show_caps: Draw the radius caps. Default: True.

    Returns:
        The matplotlib ``Axes``; its figure is ``ax.figure`` (see :func:`save_figure`).

    Raises:
        ImportError: matplotlib is not installed (``pip install 'rsmooth[plot]'``).
        ValueError: ``results`` is empty or ``max_radius`` is not positive.

    Example:
        >>> import pytest; _ = pytest.importorskip("matplotlib")
        >>> from rsmooth import Certificate
        >>> import torch
        >>> cert = Certificate(
        ...     prediction=torch.tensor([1, 0]), radius=torch.tensor([0.3, 0.8]),
        ...     p_lower=torch.zeros(2), count=torch.zeros(2), n=10, n0=1, alpha=0.1, sigma=0.5)
        >>> ax = plot_certified_accuracy({"run": cert}, targets={"run": torch.tensor([1, 0])})
        >>> [line.get_label() for line in ax.get_lines()]
        ['run']
        >>> [c.get_label() for c in ax.collections]  # the cap: 0.5 * Phi^-1(0.1 ** (1 / 10))
        ['run: radius cap 0.41 (sigma=0.5, n=10 samples, alpha=0.1)']
    """
    _matplotlib()
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("results must name at least one result, got none")
    num_points = check_int("num_points", num_points, min=2)
    given_caps = dict(radius_caps or {})
    for name, value in given_caps.items():
        if name not in results:
            raise ValueError(f"radius_caps names {name!r}, which is not in results")
        check_positive(f"radius_caps[{name!r}]", value)
    curves = {}
    caps: dict[str, tuple[float, str]] = {}
    largest = 0.0
    for name, cert in results.items():
        labels = None if targets is None else targets.get(name)
        correct, radius = correct_and_radius(cert, labels)
        largest = max(largest, float(radius[correct].max()) if bool(correct.any()) else 0.0)
        curves[name] = (cert, labels)
        if name in given_caps:
            caps[name] = (float(given_caps[name]), "")
        elif show_caps:
            found = _radius_cap(cert)
            if found is not None:
                caps[name] = found
    if not show_caps:
        caps = {}
    if max_radius is None:
        right = max([largest, *(cap for cap, _ in caps.values())])
        max_radius = 1.05 * right if right > 0 else 1.0
    max_radius = check_positive("max_radius", max_radius)
    grid = np.linspace(0.0, max_radius, num_points)
    own_figure = ax is None
    if ax is None:
        figure = Figure(figsize=(7.0, 5.0), layout="constrained")
        ax = figure.add_subplot()
    colors: dict[str, Any] = {}
    for name, (cert, labels) in curves.items():
        _, accuracy = certified_accuracy_curve(cert, labels, grid)
        (line,) = ax.plot(grid, accuracy, label=str(name), drawstyle="steps-post")
        colors[name] = line.get_color()
    shared: dict[tuple[float, str], list[str]] = {}
    for name, key in caps.items():
        shared.setdefault(key, []).append(name)
    for (cap, settings), names in shared.items():
        color: Any
        # one line per distinct cap: in the run's colour, or grey when several runs share it
        if len(names) == len(results) and len(names) > 1:
            who, color = "", "0.35"
        elif len(names) > 1:
            who, color = ", ".join(map(str, names)) + ": ", "0.35"
        else:
            who, color = f"{names[0]}: ", colors[names[0]]
        ax.vlines(
            cap,
            0.0,
            1.0,
            colors=color,
            linestyles="dashed",
            linewidth=1.0,
            label=f"{who}radius cap {cap:.2f}{settings}",
        )
    from matplotlib.ticker import PercentFormatter

    ax.set_xlim(0.0, max_radius)
    ax.set_ylim(0.0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))  # in percent, as in the tables
    ax.set_xlabel("radius")
    ax.set_ylabel("certified accuracy")
    ax.grid(True, alpha=0.3)
    if own_figure:  # under the axes, in columns (constrained layout makes room): the plot keeps
        # the figure's width, and no curve is hidden
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncols=2,
            fontsize="small",
            frameon=False,
        )
    else:  # the caller's axes: their figure's layout is theirs
        ax.legend()
    if title is not None:
        ax.set_title(title)
    return ax


def _radius_cap(cert: Any) -> tuple[float, str] | None:
    """``(cap, " (sigma=..., n=... samples, alpha=...)")`` of a run, when its settings are known."""
    settings = getattr(cert, "settings", None)
    if settings is not None:
        sigma, n, alpha = settings.sigma, settings.n, settings.alpha
    elif all(isinstance(getattr(cert, key, None), (int, float)) for key in ("sigma", "n", "alpha")):
        sigma, n, alpha = cert.sigma, cert.n, cert.alpha
    else:
        return None
    if n is None:
        return None
    cap = max_certified_radius(n, alpha, sigma)
    if cap <= 0:
        return None
    return cap, f" (sigma={sigma:g}, n={n:,} samples, alpha={alpha:g})"


def save_figure(figure: Any, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    r"""Save a figure (or the figure of an ``Axes``) to ``path``; the format follows the suffix.

    Args:
        figure: A matplotlib ``Figure`` or ``Axes``.
        path: Output file (``.png``, ``.pdf``, ``.svg``, ...); missing folders are created.
        dpi: Resolution for raster formats. Default: 150.

    Returns:
        The path written.

    Example:
        >>> import pytest; _ = pytest.importorskip("matplotlib")
        >>> import tempfile, pathlib
        >>> from rsmooth.metrics import read_results
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.tsv"
        >>> _ = f.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n")
        >>> ax = plot_certified_accuracy({"run": read_results(f)})
        >>> save_figure(ax, f.with_suffix(".png")).read_bytes()[:4]
        b'\x89PNG'
    """
    _matplotlib()
    if hasattr(figure, "figure") and not hasattr(figure, "savefig"):
        figure = figure.figure
    if not hasattr(figure, "savefig"):
        raise TypeError(f"figure must be a matplotlib Figure or Axes, got {type(figure).__name__}")
    dpi = check_int("dpi", dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
