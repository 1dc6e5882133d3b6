"""Reproduce the papers' comparison of the training methods (nine rows) at a CPU-sized budget.

LeNet on the full Fashion-MNIST training set, sigma = 0.5, the same epochs and schedule for every
method (gaussian, stability, smoothadv, macer, consistency, smoothmix, smoothmix+one-step, catrs,
adaptive), then
CERTIFY (N = 10,000, N0 = 100, alpha = 0.001) on a fixed subset of the test set: every
``10000 // num_certify``-th image. Writes into ``--results-dir`` (default ``docs/results``):

- ``<method>.tsv``: the per-image results file (``idx label predict radius correct time count n``);
- ``results.md``: ACR and certified accuracy at r = 0, 0.25, ..., 1.75, plus the exact command,
  budget and wall times (``summary.rst.inc``: the same for ``docs/results.rst``);
- ``certified_accuracy.png``: certified accuracy vs radius (needs matplotlib);
- ``run.json``: the budget and the wall time of every method, accumulated over invocations.

Resumable per method: checkpoints are kept in ``--work-dir``, a finished training is not redone,
an interrupted one continues from its last epoch, and a complete results file is skipped, so a long
run can be split across invocations (``--methods gaussian macer``, then the others). Examples::

    python benchmarks/reproduce.py --epochs 1 --train-limit 256 --num-certify 20 --n 1000 \\
        --results-dir /tmp/smoke --work-dir /tmp/smoke     # a smoke run, about a minute
    python benchmarks/reproduce.py --epochs 10 --num-certify 500           # the documented run

Cost on 2 CPU cores (torch 2.13, measured on 2,048-image slices): one epoch over the 60,000
training images takes about 0.2 min (gaussian), 0.3 (stability), 0.3 (consistency), 4 (macer),
9 (smoothadv) and 4.5 (each smoothmix), about 23 minutes for all seven methods; certifying 500
images at N = 10,000 takes about 10 minutes per method. The documented run (10 epochs) therefore
takes about 4 hours of training plus 1.2 hours of certification; split it with ``--methods``.

The papers' hyperparameters (MNIST configurations of Jeong et al., sigma = 0.5): Gaussian m=1;
stability lambda=2; SmoothAdv PGD eps=255/256, T=10, m=4; MACER m=16, lambda=16, gamma=8,
beta=16, deferred; consistency m=2, lambda=5, eta=0.5; SmoothMix m=4, T=4, alpha=1, eta=5 (and
the one-step adversary). Loader batch 256, or 256 // m for the chunked methods (algorithms.md
§9.1); SGD lr 0.01, momentum 0.9, wd 1e-4; the LR step and the warm-ups scale with ``--epochs``
(the papers' 90 epochs: step 30, warm-up 10).

The two newer methods (``shared/algorithms-newer.md``). CAT-RS (Jeong et al., 2023): its prior
is the smoothed class-frequency table of a Gaussian model trained at sigma = 0.25 **in the same
run** (same epochs and schedule, ``<work-dir>/gaussian-sigma0.25.pt``), with
``--prior-samples`` draws per training image (the official 10,000; 100 at the CPU budget); the
authors published no Fashion-MNIST hyperparameters, so ours are the official code's defaults
(m = 4, epsilon = 1.0, T = 4, lambda = 1.0; CPU budget m = 2). Sun et al. (2025) published no
(Fashion-)MNIST settings at all; ours follow their CIFAR-10 sigma = 0.5 script: m = 4, epsilon =
0.25, T = 6, threshold 0.4, discard at 70/150 of the epochs (epoch 5 of 10), weights refreshed
every 10/150 of the epochs (every epoch of 10); CPU budget m = 2, T = 4. Both are chosen, not
the authors'. The whole comparison in one command (on a GPU, add ``--device cuda``)::

    python benchmarks/reproduce.py --epochs 10 --num-certify 500
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # train.py, models.py

import train as train_script
from models import load_checkpoint

from rsmooth import SmoothedClassifier
from rsmooth.datasets import load_dataset
from rsmooth.metrics import CertificationResults, format_table, read_results
from rsmooth.plotting import plot_certified_accuracy, save_figure
from rsmooth.procedures import Certify
from rsmooth.runner import certify_dataset
from rsmooth.stats import max_certified_radius

ROOT = Path(__file__).resolve().parents[1]
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

#: Method -> flags of ``examples/train.py`` (the papers' MNIST sigma = 0.5 settings).
#: The CPU budget's configurations: the papers' settings, but with fewer noise copies and attack
#: steps for the costly methods (SmoothAdv T=4, m=2; MACER m=8; SmoothMix m=2, T=4), which cuts
#: their cost per epoch 2-4x. ``--paper-configs`` uses :data:`PAPER_METHODS` instead.
METHODS: dict[str, list[str]] = {
    "gaussian": ["--criterion", "gaussian", "--num-noise", "1"],
    "stability": ["--criterion", "stability", "--lbd", "2.0"],
    "smoothadv": [
        "--criterion", "smoothadv", "--attack", "pgd",
        "--epsilon", str(255 / 256), "--num-steps", "4", "--num-noise", "2",
    ],
    "macer": [
        "--criterion", "macer", "--num-noise", "8", "--lbd", "16.0",
        "--gamma", "8.0", "--beta", "16.0", "--deferred",
    ],
    "consistency": ["--criterion", "consistency", "--num-noise", "2", "--lbd", "5.0", "--eta", "0.5"],
    "smoothmix": [
        "--criterion", "smoothmix", "--num-noise", "2", "--num-steps", "4",
        "--step-size", "1.0", "--eta", "5.0",
    ],
    "smoothmix+one-step": [
        "--criterion", "smoothmix", "--num-noise", "2", "--num-steps", "4",
        "--step-size", "1.0", "--eta", "5.0", "--one-step-adversary",
    ],
    "catrs": [
        "--criterion", "catrs", "--num-noise", "2", "--epsilon", "1.0", "--num-steps", "4",
        "--lbd", "1.0",
    ],
    "adaptive": [
        "--criterion", "adaptive", "--num-noise", "2", "--epsilon", "0.25", "--num-steps", "4",
        "--threshold", "0.4",
    ],
}  # fmt: skip

#: The papers' configurations (MNIST settings of Jeong et al., sigma = 0.5).
PAPER_METHODS: dict[str, list[str]] = {
    "gaussian": ["--criterion", "gaussian", "--num-noise", "1"],
    "stability": ["--criterion", "stability", "--lbd", "2.0"],
    "smoothadv": [
        "--criterion", "smoothadv", "--attack", "pgd",
        "--epsilon", str(255 / 256), "--num-steps", "10", "--num-noise", "4",
    ],
    "macer": [
        "--criterion", "macer", "--num-noise", "16", "--lbd", "16.0",
        "--gamma", "8.0", "--beta", "16.0", "--deferred",
    ],
    "consistency": ["--criterion", "consistency", "--num-noise", "2", "--lbd", "5.0", "--eta", "0.5"],
    "smoothmix": [
        "--criterion", "smoothmix", "--num-noise", "4", "--num-steps", "4",
        "--step-size", "1.0", "--eta", "5.0",
    ],
    "smoothmix+one-step": [
        "--criterion", "smoothmix", "--num-noise", "4", "--num-steps", "4",
        "--step-size", "1.0", "--eta", "5.0", "--one-step-adversary",
    ],
    "catrs": [
        "--criterion", "catrs", "--num-noise", "4", "--epsilon", "1.0", "--num-steps", "4",
        "--lbd", "1.0",
    ],
    "adaptive": [
        "--criterion", "adaptive", "--num-noise", "4", "--epsilon", "0.25", "--num-steps", "6",
        "--threshold", "0.4",
    ],
}  # fmt: skip

#: Methods whose training needs a Gaussian sigma = 0.25 model first (the CAT-RS prior).
NEEDS_PRIOR = frozenset({"catrs"})

#: The authors' full-budget ACRs (Fashion-MNIST, LeNet, sigma = 0.5, full test set, N = 100,000).
PAPER_ACR = {
    "gaussian": 1.056,
    "macer": 1.183,
    "consistency": 1.212,
    "smoothmix": 1.237,
    "smoothadv": 1.255,
    "catrs": 1.274,  # 150 epochs (the others: 90); Sun et al. published no Fashion-MNIST result
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--epochs", type=int, default=10, help="epochs for every method")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N images")
    p.add_argument("--num-certify", type=int, default=500, help="test images certified")
    p.add_argument("--n", type=int, default=10_000, help="estimation samples N")
    p.add_argument("--n0", type=int, default=100, help="selection samples N0")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument(
        "--batch",
        type=int,
        default=200,
        help="forward batch of the certifier (200 is fastest on CPU)",
    )
    p.add_argument(
        "--paper-configs",
        action="store_true",
        help="the papers' m and T for every method (about 2.5x the training time)",
    )
    p.add_argument(
        "--prior-samples",
        type=int,
        default=None,
        help="CAT-RS prior: samples per training image (default 100; 10,000 with --paper-configs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST files")
    p.add_argument("--results-dir", default=str(ROOT / "docs" / "results"))
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work"), help="checkpoints")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bars")
    return p


def schedule(epochs: int) -> tuple[int, int]:
    """LR step and warm-up epochs for ``epochs``, scaled from the papers' 90 / 30 / 10."""
    return max(1, round(epochs * 30 / 90)), max(1, round(epochs * 10 / 90))


def reweight_every(epochs: int) -> int:
    """Sun et al.'s weight refresh period for ``epochs``, scaled from their 10 of 150."""
    return max(1, round(epochs * 10 / 150))


def prior_samples(args: argparse.Namespace) -> int:
    """Draws per training image for the CAT-RS prior table."""
    if args.prior_samples is not None:
        return int(args.prior_samples)
    return 10_000 if args.paper_configs else 100


def _load_run(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"methods": {}}


def _save_run(path: Path, run: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")


def _train_flags(
    args: argparse.Namespace, sigma: float, checkpoint: Path, method_flags: Sequence[str]
) -> list[str]:
    """The flags of ``examples/train.py`` shared by every method, then the method's own."""
    lr_step, warmup = schedule(args.epochs)
    flags = [
        "--dataset", "fashion-mnist",
        "--arch", "lenet",
        "--sigma", str(sigma),
        "--epochs", str(args.epochs),
        "--lr", "0.01",
        "--lr-step", str(lr_step),
        "--warmup", str(warmup),
        "--seed", str(args.seed),
        "--device", args.device,
        "--out", str(checkpoint),
        "--resume",
        *method_flags,
    ]  # fmt: skip
    if args.train_limit is not None:
        flags += ["--limit", str(args.train_limit)]
    if args.data_root is not None:
        flags += ["--data-root", args.data_root]
    if args.quiet:
        flags.append("--quiet")
    return flags


def _trained(checkpoint: Path, epochs: int) -> bool:
    return checkpoint.is_file() and load_checkpoint(checkpoint)[1]["epoch"] >= epochs


def _prior_flags(args: argparse.Namespace, run: dict[str, Any]) -> list[str]:
    """Train the CAT-RS prior's Gaussian sigma = 0.25 model (once) and point train.py at it."""
    work_dir = Path(args.work_dir)
    checkpoint = work_dir / "gaussian-sigma0.25.pt"
    flags = _train_flags(args, 0.25, checkpoint, METHODS["gaussian"])
    record = run["methods"].setdefault("catrs", {"train_seconds": 0.0, "certify_seconds": 0.0})
    record["prior_model_flags"] = flags
    if not _trained(checkpoint, args.epochs):
        print(f"[catrs] training the prior's model: examples/train.py {shlex.join(flags)}")
        started = time.perf_counter()
        train_script.train(train_script.build_parser().parse_args(flags))
        record["prior_model_seconds"] = record.get("prior_model_seconds", 0.0) + (
            time.perf_counter() - started
        )
        _save_run(Path(args.results_dir) / "run.json", run)
    samples = prior_samples(args)
    return [
        "--prior-from", str(checkpoint),
        "--prior", str(work_dir / f"catrs-prior-{samples}.pt"),
        "--prior-sigma", "0.25",
        "--prior-samples", str(samples),
    ]  # fmt: skip


def run_method(name: str, args: argparse.Namespace, run: dict[str, Any]) -> CertificationResults:
    """Train (or resume) and certify one method; updates ``run`` with its timings."""
    results_dir, work_dir = Path(args.results_dir), Path(args.work_dir)
    record = run["methods"].setdefault(name, {"train_seconds": 0.0, "certify_seconds": 0.0})
    checkpoint = work_dir / f"{name}.pt"
    method_flags = (PAPER_METHODS if args.paper_configs else METHODS)[name]
    flags = _train_flags(args, args.sigma, checkpoint, method_flags)
    if "adaptive" in method_flags:
        flags += ["--reweight-every", str(reweight_every(args.epochs))]
    if name in NEEDS_PRIOR:
        flags += _prior_flags(args, run)
    record["train_flags"] = flags

    if not _trained(checkpoint, args.epochs):
        print(f"[{name}] training: examples/train.py {shlex.join(flags)}")
        started = time.perf_counter()
        train_script.train(train_script.build_parser().parse_args(flags))
        record["train_seconds"] += time.perf_counter() - started
        _save_run(results_dir / "run.json", run)

    out = results_dir / f"{name}.tsv"
    test = load_dataset("fashion-mnist", "test", root=args.data_root)
    skip = max(1, len(test) // args.num_certify)
    expected = len(range(0, min(len(test), skip * args.num_certify), skip))
    if out.is_file() and len(read_results(out)) >= expected:
        print(f"[{name}] {out} is complete ({expected} rows), skipping certification")
        return read_results(out)
    model, saved = load_checkpoint(checkpoint, map_location=args.device)
    smoothed = SmoothedClassifier(model, sigma=saved["sigma"], batch_size=args.batch)
    print(f"[{name}] certifying {expected} test images (every {skip}-th), n={args.n} -> {out}")
    started = time.perf_counter()
    rows = certify_dataset(
        smoothed,
        test,
        out,
        Certify(n=args.n, n0=args.n0, alpha=args.alpha),
        seed=args.seed,
        skip=skip,
        stop=skip * args.num_certify,
        device=args.device,
        progress=not args.quiet,
    )
    record["certify_seconds"] += time.perf_counter() - started
    _save_run(results_dir / "run.json", run)
    return rows


def write_report(args: argparse.Namespace, run: dict[str, Any], argv: Sequence[str]) -> str:
    """Write ``results.md``, ``summary.rst.inc`` and the plot from the results files; returns the table."""
    results_dir = Path(args.results_dir)
    results = {
        name: read_results(results_dir / f"{name}.tsv")
        for name in METHODS
        if (results_dir / f"{name}.tsv").is_file()
    }
    if not results:
        return ""
    table = format_table(results, RADII, fmt="markdown")
    budget = run["budget"]
    lines = [
        "# Fashion-MNIST, LeNet, sigma = 0.5: the training methods at a CPU budget",
        "",
        "Generated by `benchmarks/reproduce.py`. Approximate certified accuracy (%) at L2 radius r"
        " and average certified radius (ACR); abstentions count as wrong.",
        "",
        table,
        "",
        f"- Command (last invocation): `{run['command']}`",
        f"- Training: {budget['epochs']} epochs on "
        f"{budget['train_images']} Fashion-MNIST training images, lr 0.01, StepLR step "
        f"{budget['lr_step']} (gamma 0.1), warm-up {budget['warmup']} epochs, seed {budget['seed']}.",
        f"- Configurations: {budget.get('configs', 'cpu')} "
        "(cpu: SmoothAdv PGD T=4, m=2; MACER m=8; SmoothMix m=2, T=4; the rest as in the papers; "
        "paper: SmoothAdv T=10, m=4; MACER m=16; SmoothMix m=4, T=4).",
        f"- {_newer_methods_note(run)}",
        f"- Certification: {budget['num_certify']} test images (every {budget['skip']}-th), "
        f"N = {budget['n']}, N0 = {budget['n0']}, alpha = {budget['alpha']} "
        f"(largest possible radius {budget['max_radius']:.3f}).",
        f"- Machine: {budget['machine']}.",
        "",
        "| method | train (s) | certify (s) |",
        "|---|---|---|",
    ]
    for name in results:
        rec = run["methods"].get(name, {})
        lines.append(
            f"| {name} | {rec.get('train_seconds', 0):.0f} | {rec.get('certify_seconds', 0):.0f} |"
        )
    (results_dir / "results.md").write_text("\n".join(lines) + "\n")
    plotted = False
    try:
        ax = plot_certified_accuracy(
            results, max_radius=2.0, title="Fashion-MNIST, LeNet, sigma = 0.5"
        )
        save_figure(ax, results_dir / "certified_accuracy.png")
        plotted = True
    except ImportError as error:
        print(f"no plot written: {error}")
    (results_dir / "summary.rst.inc").write_text(_rst_summary(results, run, plotted))
    return table


def _newer_methods_note(run: dict[str, Any]) -> str:
    """How CAT-RS and Sun et al.'s method were configured (their settings are ours, not theirs)."""
    budget = run["budget"]
    prior_seconds = run["methods"].get("catrs", {}).get("prior_model_seconds", 0.0)
    return (
        "CAT-RS: prior from a Gaussian sigma = 0.25 LeNet trained in the same run (another "
        f"{prior_seconds:.0f} s, not in the table) with {budget.get('prior_samples', 100)} "
        "samples per image; epsilon 1.0, lambda 1.0, T 4, m 2 (cpu) / 4 (paper); the authors "
        "published no Fashion-MNIST settings. Adaptive (Sun et al., who published no "
        "(Fashion-)MNIST settings; ours follow their CIFAR-10 sigma = 0.5 script): threshold 0.4, "
        f"discard at epoch {round(budget['epochs'] * 70 / 150)}, weights every "
        f"{budget.get('reweight_every', 1)} epoch(s), epsilon 0.25, T 4, m 2 (cpu) / T 6, m 4 "
        "(paper)."
    )


def _rst_summary(results: dict[str, CertificationResults], run: dict[str, Any], plot: bool) -> str:
    """The reStructuredText fragment included by ``docs/results.rst``.

    Two narrow tables (they must fit the page): certified accuracy and ACR at the radii up to the
    radius cap (beyond it every entry is 0), and the wall times.
    """
    budget = run["budget"]
    cap = float(budget["max_radius"])
    radii = [r for r in RADII if r <= cap]
    beyond = [r for r in RADII if r > cap]
    csv = [line.split(",") for line in format_table(results, radii, fmt="csv").splitlines()]
    header = ["method", "ACR", *(f"r = {r:g}" for r in radii)]
    rows = [[cells[0], cells[2], *cells[3:]] for cells in csv[1:]]  # drop N: it is in the notes
    lines = [
        ".. csv-table:: Certified accuracy (%) at L2 radius r, and the average certified radius",
        "   :header-rows: 1",
        "",
        "   " + ",".join(header),
        *("   " + ",".join(row) for row in rows),
        "",
    ]
    if beyond:
        lines += [
            f"At r = {beyond[0]:g} and beyond every method certifies 0%: the radius cap "
            f"σΦ⁻¹(α^(1/N)) at N = {budget['n']:,} is {cap:.3f} (the dashed lines in the plot).",
            "",
        ]
    lines += [
        ".. csv-table:: Wall time (seconds)",
        "   :header-rows: 1",
        "",
        "   method,train,certify",
        *(
            f"   {name},{run['methods'].get(name, {}).get('train_seconds', 0):.0f},"
            f"{run['methods'].get(name, {}).get('certify_seconds', 0):.0f}"
            for name in results
        ),
        "",
        f"- Command: ``{run['command']}``",
        f"- Training: {budget['epochs']} epochs on {budget['train_images']} training images, "
        f"StepLR step {budget['lr_step']}, warm-up {budget['warmup']} epochs, seed "
        f"{budget['seed']}.",
        f"- Configurations: {budget.get('configs', 'cpu')} (cpu: SmoothAdv PGD T=4, m=2; MACER "
        "m=8; SmoothMix m=2, T=4; the rest as in the papers).",
        f"- {_newer_methods_note(run)}",
        f"- Certification: {budget['num_certify']} test images (every {budget['skip']}-th), "
        f"N = {budget['n']}, N0 = {budget['n0']}, alpha = {budget['alpha']} (largest possible "
        f"radius {budget['max_radius']:.3f}).",
        f"- Machine: {budget['machine']}.",
        "",
    ]
    if plot:
        lines += [
            ".. image:: /results/certified_accuracy.png",
            "   :alt: certified accuracy against radius for each method",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for flag in ("epochs", "num_certify", "n", "n0", "batch", "prior_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SystemExit(
                f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
            )
    results_dir = Path(args.results_dir)
    run = _load_run(results_dir / "run.json")
    lr_step, warmup = schedule(args.epochs)
    test_size = 10_000
    budget = {
        "epochs": args.epochs,
        "train_images": args.train_limit or 60_000,
        "lr_step": lr_step,
        "warmup": warmup,
        "num_certify": args.num_certify,
        "skip": max(1, test_size // args.num_certify),
        "n": args.n,
        "n0": args.n0,
        "alpha": args.alpha,
        "sigma": args.sigma,
        "seed": args.seed,
        "configs": "paper" if args.paper_configs else "cpu",
        "max_radius": max_certified_radius(args.n, args.alpha, args.sigma),
        "machine": f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "prior_samples": prior_samples(args),
        "reweight_every": reweight_every(args.epochs),
    }
    previous = run.get("budget", {})  # a file from before a key existed: compare the shared keys
    if any(previous[k] != v for k, v in budget.items() if k in previous and k != "machine"):
        raise SystemExit(
            f"{results_dir / 'run.json'} was made with another budget ({run['budget']}); "
            "use another --results-dir or remove it"
        )
    run["budget"] = budget
    run["command"] = "python benchmarks/reproduce.py " + shlex.join(argv)
    started = time.perf_counter()
    for name in args.methods:
        run_method(name, args, run)
    run["last_invocation_seconds"] = time.perf_counter() - started
    _save_run(results_dir / "run.json", run)
    table = write_report(args, run, argv)
    print()
    print(table)
    print(f"\nwrote {results_dir / 'results.md'} ({run['last_invocation_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
