"""``rsmooth report``, ``rsmooth plan`` and ``rsmooth merge``: results files in, tables out."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsmooth.cli._common import CommandError

__all__ = ["merge", "plan", "report"]


def report(args: argparse.Namespace) -> int:
    from rsmooth.metrics import format_table, read_results

    if args.labels is not None and len(args.labels) != len(args.files):
        raise CommandError(
            f"--labels must give one name per file ({len(args.files)}), got {len(args.labels)}"
        )
    if args.radii is not None:
        bad = [r for r in args.radii if not (r >= 0 and r != float("inf"))]
        if bad:
            raise CommandError(f"--radii must be non-negative finite numbers, got {bad[0]}")
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
    if args.labels is not None:
        names = list(args.labels)
    else:
        names = [p.name[: -len(".tsv")] if p.name.endswith(".tsv") else p.name for p in paths]
        if len(set(names)) < len(names):
            names = [str(p) for p in paths]
    if len(set(names)) < len(names):
        raise CommandError(f"--labels must be distinct, got {names}")
    results = {name: read_results(path) for name, path in zip(names, paths, strict=True)}
    for result in results.values():
        if len(result) == 0:
            raise CommandError(f"{result.path}: no rows")
    grids = any(result.kind == "grid" for result in results.values())
    if grids and args.plot is not None:
        raise CommandError(
            "--plot draws certified accuracy at every radius, but a grid file (rsmooth certify "
            "--radii) is certified only at its grid radii; run CERTIFY (without --radii) for "
            "radius curves"
        )
    print(format_table(results, args.radii, fmt=args.format))
    if args.plot is not None:
        from rsmooth.plotting import plot_certified_accuracy, save_figure

        ax = plot_certified_accuracy(results, max_radius=args.max_radius)
        save_figure(ax, args.plot)
        print(f"rsmooth report: wrote {args.plot}", file=sys.stderr)
    _show_settings(results)  # after the outputs: an error stays one message
    if grids:
        print(
            "rsmooth report: no ACR for grid files (rsmooth certify --radii): each input "
            "stopped as soon as every grid radius was decided, so its radius is only a lower "
            "bound, not comparable with CERTIFY's",
            file=sys.stderr,
        )
    return 0


def _show_settings(results: dict[str, Any]) -> None:
    """Print each run's settings on stderr, and warn when runs are not comparable."""
    known = {}
    for name, result in results.items():
        settings = result.settings
        if settings is None:
            text = "no settings file (sigma, n and alpha unknown)"
        elif settings.kind == "grid":
            text = (
                f"grid {list(settings.radii)}, sigma {settings.sigma:g}, max_n "
                f"{settings.max_n:d}, alpha {settings.alpha:g}"
            )
            known[name] = {"sigma": settings.sigma, "alpha": settings.alpha}
        else:
            text = (
                f"sigma {settings.sigma:g}, n {settings.n:d}, alpha {settings.alpha:g}, "
                f"radius cap {settings.radius_cap:.3f}"
            )
            known[name] = {"sigma": settings.sigma, "n": settings.n, "alpha": settings.alpha}
        print(f"rsmooth report: {name}: {text}", file=sys.stderr)
    for key in ("sigma", "n", "alpha"):
        values = {name: entry[key] for name, entry in known.items() if key in entry}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{name}: {value:g}" for name, value in values.items())
            print(
                f"rsmooth report: warning: the runs differ in {key} ({listed}), so their ACRs "
                "and certified accuracies are not comparable (n and alpha set the radius cap "
                "and the bound; sigma sets the scale)",
                file=sys.stderr,
            )


def plan(args: argparse.Namespace) -> int:
    import numpy as np

    from rsmooth._validation import check_radii
    from rsmooth.stats import radius_to_probability

    radii = check_radii(args.radii)
    alpha = args.alpha
    beta = alpha if args.beta is None else args.beta
    for name, value in (("--alpha", alpha), ("--beta", beta)):
        if not 0 < value < 1:
            raise CommandError(f"{name} must be in (0, 1), got {value}")
    if args.n0 < 0:
        raise CommandError(f"--n0 must be >= 0, got {args.n0}")
    certify_n = args.max_n if args.n is None else args.n
    if certify_n < 1:
        raise CommandError(f"--n must be a positive integer, got {certify_n}")
    targets = radius_to_probability(np.asarray(radii), args.sigma)
    if args.source is not None:
        if args.p is not None:
            raise CommandError("give either --p or --from, not both")
        return _plan_from(args, radii, alpha, beta, certify_n)
    p_values = np.asarray(
        sorted(set(args.p or [0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, *targets.tolist()]))
    )
    bad = [p for p in p_values if not 0 <= p <= 1]
    if bad:
        raise CommandError(f"--p must be probabilities in [0, 1], got {bad[0]}")
    cost = _expected_cost(args, p_values, radii, alpha, beta, certify_n)
    _print_schedule(cost["looks"], alpha, beta, radii, targets)
    total = args.n0 + certify_n
    header = ["p_A", "E[samples]", "saving"]
    header += [f"P(r={r:g})" for r in radii] + [f"CERTIFY P(r={r:g})" for r in radii]
    rows = []
    for i, p in enumerate(p_values.tolist()):
        expected = float(cost["samples"][i])
        rows.append(
            [f"{p:.6g}", f"{expected:,.0f}", f"{total / (args.n0 + expected):.1f}x"]
            + [f"{v:.4f}" for v in cost["certify_sequential"][i]]
            + [f"{v:.4f}" for v in cost["certify_certify"][i]]
        )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print("\n".join("| " + " | ".join(row) + " |" for row in rows))
    print(
        f"\nE[samples] excludes the n0={args.n0} selection samples; saving = (n0 + n) / "
        f"(n0 + E[samples]) against CERTIFY with n={certify_n}; P(r=...) is the probability "
        "of certifying each radius"
    )
    return 0


def _print_schedule(
    looks: Any, alpha: float, beta: float, radii: Sequence[float], targets: Any
) -> None:
    shown = ", ".join(f"{int(v):,}" for v in looks)
    print(f"schedule: {len(looks)} looks at {shown}")
    print(
        f"each look tests at alpha/K = {alpha / len(looks):.3g} (certify) and beta/K = "
        f"{beta / len(looks):.3g} (rule out); radii {list(radii)} need p_A >= "
        + ", ".join(f"{t:.4f}" for t in targets)
        + "\n"
    )


def _plan_from(
    args: argparse.Namespace, radii: Sequence[float], alpha: float, beta: float, certify_n: int
) -> int:
    import numpy as np

    from rsmooth.metrics import certified_accuracy, read_results
    from rsmooth.sequential import plug_in_probabilities
    from rsmooth.stats import radius_to_probability

    path = Path(args.source)
    if not path.is_file():
        raise CommandError(f"--from: no such file: {path}")
    results = read_results(path)
    if results.kind == "grid":
        raise CommandError(
            f"--from {path}: a grid results file (rsmooth certify --radii); its counts stopped "
            "early and cannot predict anything: give a CERTIFY results file"
        )
    if results.count is None or results.n is None or len(results) == 0:
        raise CommandError(
            f"--from {path}: needs the count and n columns (files written by rsmooth certify)"
        )
    p_values, correct = plug_in_probabilities(
        results.count.numpy(), results.n.numpy(), results.label.numpy(),
        results.prediction.numpy(),
    )  # fmt: skip
    cost = _expected_cost(args, p_values, radii, alpha, beta, certify_n)
    targets = radius_to_probability(np.asarray(radii), args.sigma)
    _print_schedule(cost["looks"], alpha, beta, radii, targets)
    samples = cost["samples"] + args.n0
    total = args.n0 + certify_n
    measured = certified_accuracy(results, None, radii)
    print(
        f"{len(results)} inputs of {path.name}: expected samples per input {samples.mean():,.0f} "
        f"(median {np.median(samples):,.0f}, 95th percentile {np.percentile(samples, 95):,.0f}) "
        f"against CERTIFY's {total:,}: {total / samples.mean():.1f}x fewer\n"
    )
    header = ["radius", "sequential (expected)", f"CERTIFY n={certify_n} (expected)", "in file"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for j, r in enumerate(radii):
        print(
            f"| {r:g} | {100 * (correct * cost['certify_sequential'][:, j]).mean():.2f} | "
            f"{100 * (correct * cost['certify_certify'][:, j]).mean():.2f} | "
            f"{100 * float(measured[j]):.2f} |"
        )
    print(
        "\ncertified accuracy (%); p_A per input is the plug-in (count + 1/2) / (n + 1) of the "
        "class CERTIFY selected (the sequential certifier selects the same class), counted "
        "where that class is the label"
    )
    return 0


def _expected_cost(
    args: argparse.Namespace,
    p_values: Any,
    radii: Sequence[float],
    alpha: float,
    beta: float,
    certify_n: int,
) -> dict[str, Any]:
    from rsmooth.sequential import RadiusGrid, expected_cost

    grid = RadiusGrid(
        tuple(radii), alpha=alpha, max_n=args.max_n, n0=max(args.n0, 1), beta=beta,
        growth=args.growth,
    )  # fmt: skip
    return expected_cost(p_values, grid, args.sigma, certify_n)


def merge(args: argparse.Namespace) -> int:
    from rsmooth.shards import merge_results

    parts = args.parts or None
    results = merge_results(args.out, parts)
    print(f"rsmooth merge: {len(results)} rows into {args.out}", file=sys.stderr)
    return 0
