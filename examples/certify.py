"""Certify a checkpoint of ``examples/train.py`` on a test split and report certified accuracy.

Writes the standard tab-separated results file of the randomized-smoothing literature
(``idx label predict radius correct time``, then rsmooth's ``count n``; radius with 3 significant
digits, ``correct`` = ``int(predict == label)``, so an abstention counts as wrong) with
:func:`rsmooth.runner.certify_dataset`, then prints the certified-accuracy table and the average
certified radius (ACR). Run it again with the same settings to resume an interrupted file.
Example::

    python examples/certify.py checkpoints/fashion-mnist_lenet_smoothmix_sigma0.5.pt \\
        --skip 20 --n 100000 --out results/smoothmix.tsv --plot results/smoothmix.png

As in the reference ``certify.py``, dataset index ``i`` is certified iff ``i % skip == 0``, and the
loop stops at index ``max``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/models.py

from models import load_checkpoint

from rsmooth import SmoothedClassifier
from rsmooth.datasets import DATASETS, load_dataset
from rsmooth.metrics import CertificationResults, format_table
from rsmooth.plotting import plot_certified_accuracy, save_figure
from rsmooth.procedures import Certify
from rsmooth.runner import certify_dataset

__all__ = ["RADII", "certify_checkpoint", "main", "save_plot"]

#: Radii of the printed table (the Fashion-MNIST / MNIST sigma = 0.5 range).
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def certify_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    split: str = "test",
    data_root: str | None = None,
    skip: int = 1,
    max_index: int | None = None,
    n: int = 100_000,
    n0: int = 100,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> CertificationResults:
    """Certify the model of ``checkpoint`` into the results file ``out``; returns its rows.

    Thin over :func:`rsmooth.runner.certify_dataset`, so an interrupted run resumes where it
    stopped when called again with the same settings.
    """
    model, saved = load_checkpoint(checkpoint, map_location=device)
    data = load_dataset(dataset or saved["dataset"], split, root=data_root)
    smoothed = SmoothedClassifier(
        model, sigma=saved["sigma"], num_classes=saved["num_classes"], batch_size=batch_size
    )
    return certify_dataset(
        smoothed,
        data,
        out,
        Certify(n=n, n0=n0, alpha=alpha),
        seed=seed,
        skip=skip,
        stop=max_index,
        device=device,
        progress=progress,
    )


def save_plot(results: Mapping[str, CertificationResults], path: str | os.PathLike[str]) -> bool:
    """Save the certified-accuracy-vs-radius plot; without matplotlib, say so and return False."""
    try:
        ax = plot_certified_accuracy(results)
    except ImportError as error:
        print(f"no plot written to {path}: {error}")
        return False
    save_figure(ax, path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="certify.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by examples/train.py")
    p.add_argument("--out", default="results.tsv", help="results file")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the checkpoint's")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--data-root", default=None)
    p.add_argument("--skip", type=int, default=1, help="certify every SKIP-th example")
    p.add_argument("--max", type=int, default=None, help="stop at this dataset index")
    p.add_argument("--n", type=int, default=100_000, help="estimation samples N")
    p.add_argument("--n0", type=int, default=100, help="selection samples N0")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=1000, help="forward batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--plot", default=None, help="also save the certified-accuracy plot here")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show rows done, samples/s and time left on stderr (tqdm's bar when installed)",
    )
    args = p.parse_args(argv)
    for flag in ("skip", "batch", "n", "n0"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.max is not None and args.max < 1:
        p.error(f"--max must be a positive integer, got {args.max}")

    rows = certify_checkpoint(
        args.checkpoint,
        args.out,
        dataset=args.dataset,
        split=args.split,
        data_root=args.data_root,
        skip=args.skip,
        max_index=args.max,
        n=args.n,
        n0=args.n0,
        alpha=args.alpha,
        batch_size=args.batch,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
    )
    name = Path(args.checkpoint).stem
    print()
    print(format_table({name: rows}, RADII, fmt="text"))
    if args.plot:
        save_plot({name: rows}, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
