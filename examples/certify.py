"""Certify a checkpoint of ``examples/train.py`` on a test split and report certified accuracy.

Writes the standard tab-separated results file of the randomized-smoothing literature
(``idx label predict radius correct time``; radius with 3 significant digits, ``correct`` =
``int(predict == label)``, so an abstention counts as wrong), then prints the certified-accuracy
table and the average certified radius (ACR). Example::

    python examples/certify.py checkpoints/fashion-mnist_lenet_smoothmix_sigma0.5.pt \\
        --skip 20 --n 100000 --out results/smoothmix.tsv --plot results/smoothmix.png

As in the reference ``certify.py``, dataset index ``i`` is certified iff ``i % skip == 0``, and the
loop stops at index ``max``. rsmooth certifies ``--chunk`` inputs per call (the engine fills its
forward batches across inputs), so the ``time`` column is the chunk's time divided by its size.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/models.py

from models import load_checkpoint

from rsmooth import SmoothedClassifier
from rsmooth.datasets import DATASETS, load_dataset
from rsmooth.metrics import CertificationResults, format_table, read_results

__all__ = ["HEADER", "RADII", "certify_checkpoint", "main", "plot_certified_accuracy"]

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"

#: Radii of the printed table (the Fashion-MNIST / MNIST sigma = 0.5 range).
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _completed_rows(path: Path) -> set[int]:
    """Indices already in ``path``; drops a partly written last line so the file can be appended."""
    if not path.is_file():
        return set()
    lines = path.read_text().splitlines()
    if not lines or lines[0] != HEADER:
        raise ValueError(f"{path} is not a results file (header {lines[:1]}); remove it first")
    rows = [line for line in lines[1:] if len(line.split("\t")) == 6]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return {int(line.split("\t")[0]) for line in rows}


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
    chunk: int = 100,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    quiet: bool = False,
) -> CertificationResults:
    """Certify the model of ``checkpoint`` and write the results file ``out``; returns its rows."""
    model, saved = load_checkpoint(checkpoint, map_location=device)
    dataset = dataset or saved["dataset"]
    images, labels = load_dataset(dataset, split, root=data_root, limit=max_index).tensors
    indices = [i for i in range(len(labels)) if i % skip == 0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _completed_rows(out) if resume else set()
    if not resume or not out.is_file():
        out.write_text(HEADER + "\n")
    todo = [i for i in indices if i not in done]
    smoothed = SmoothedClassifier(
        model, sigma=saved["sigma"], num_classes=saved["num_classes"], batch_size=batch_size
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    if not quiet:
        print(
            f"certifying {len(todo)} of {len(indices)} {dataset} {split} images "
            f"(sigma={saved['sigma']}, n={n}, n0={n0}, alpha={alpha}) -> {out}"
        )
    started = time.perf_counter()
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        tic = time.perf_counter()
        x = images[part].to(device)
        cert = smoothed.certify(x, n=n, n0=n0, alpha=alpha, generator=generator)
        per_input = datetime.timedelta(seconds=(time.perf_counter() - tic) / len(part))
        prediction, radius = cert.prediction.tolist(), cert.radius.tolist()
        with out.open("a") as handle:
            for j, i in enumerate(part):
                label = int(labels[i])
                handle.write(
                    f"{i}\t{label}\t{prediction[j]}\t{radius[j]:.3}\t"
                    f"{int(prediction[j] == label)}\t{per_input}\n"
                )
        if not quiet:
            elapsed = time.perf_counter() - started
            print(f"  {start + len(part)}/{len(todo)} certified, {elapsed:.1f} s")
    return read_results(out)


def plot_certified_accuracy(
    results: Mapping[str, CertificationResults],
    path: str | os.PathLike[str],
    *,
    max_radius: float | None = None,
    title: str | None = None,
) -> bool:
    """Save the certified-accuracy-vs-radius plot; returns False (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"matplotlib is not installed, no plot written to {path} (pip install 'rsmooth[plot]')"
        )
        return False
    if max_radius is None:
        max_radius = max(float(r.radius.max()) for r in results.values()) * 1.05 + 1e-3
    grid = torch.linspace(0.0, max_radius, 400, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in results.items():
        correct = rows.correct & (rows.prediction >= 0)
        curve = [(correct & (rows.radius >= r)).double().mean().item() for r in grid]
        ax.plot(grid.numpy(), curve, label=name)
    ax.set_xlabel("radius (L2)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(0.0, max_radius)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
    p.add_argument("--chunk", type=int, default=100, help="inputs per certify call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="append to --out, skipping done rows")
    p.add_argument("--plot", default=None, help="also save the certified-accuracy plot here")
    args = p.parse_args(argv)
    for flag in ("skip", "chunk", "batch", "n", "n0"):
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
        chunk=args.chunk,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
    )
    name = Path(args.checkpoint).stem
    print()
    print(format_table({name: rows}, RADII, fmt="text"))
    if args.plot:
        plot_certified_accuracy({name: rows}, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
