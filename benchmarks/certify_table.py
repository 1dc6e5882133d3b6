"""What users wait for: a test set's certified-accuracy table, CERTIFY against the radius grid.

Three parts, each on the device given (``--device``), in one run:

1. **The table, end to end through the dataset runner.** A LeNet trained here on Fashion-MNIST
   with Gaussian augmentation at ``--sigma`` (real predictions, so real stopping times) certifies
   every k-th test image with :func:`rsmooth.runner.certify_dataset`: once with CERTIFY
   (``Certify(n, n0, alpha)``) and once with the grid (``RadiusGrid(radii, alpha, max_n=n,
   n0)``), each a single stream. Reported: the noisy samples each drew (from the results files,
   checked against the rows the model saw), the wall time of each, the sample saving, the wall
   saving, and their ratio (how much of the sample saving reaches the wall clock), and the
   certified accuracy of both at the grid radii.
2. **ResNet-110 throughput.** ``rsmooth.models.get_model("cifar_resnet110", "cifar10")`` (random
   weights: throughput does not depend on them): the bare-forward floor in float32 at the
   device's default batch size, and ``certify`` in float32 eager (standard layout and, on the CPU,
   channels_last), under bfloat16 autocast, with ``compile=True``, and with both; samples per
   second, the median of ``--rounds`` rounds, and the bfloat16 model's disagreement with float32
   on those noisy samples (:func:`rsmooth.diagnostics.autocast_disagreement`).
3. **A projection for the CIFAR-10 test set** from the released CERTIFY logs of
   ``tests/data/reference-certify/`` (SmoothMix, CIFAR-10, sigma 0.25 and 0.5, n = 100,000):
   each row's radius gives its vote share (the count whose Clopper–Pearson bound the radius is,
   the plug-in share of it), the exact operating characteristic gives the samples the grid draws
   for it, and the fastest ResNet-110 configuration measured in part 2 turns samples into time.

    python benchmarks/certify_table.py --out docs/performance/table      # OUT.md and OUT.json
    python benchmarks/certify_table.py --quick --out /tmp/table          # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from rsmooth import GaussianAugmentationLoss, SmoothedClassifier
from rsmooth.datasets import load_dataset
from rsmooth.diagnostics import autocast_disagreement
from rsmooth.metrics import certified_accuracy, read_results
from rsmooth.models import get_model
from rsmooth.procedures import Certify
from rsmooth.runner import certify_dataset
from rsmooth.sequential import RadiusGrid, expected_cost
from rsmooth.stats import clopper_pearson_lower

ROOT = Path(__file__).resolve().parents[1]
LOGS = {
    0.25: ROOT / "tests/data/reference-certify/cifar10-smoothmix-sigma0.25.tsv",
    0.5: ROOT / "tests/data/reference-certify/cifar10-smoothmix-onestep-sigma0.5.tsv",
}
LOG_N, LOG_N0, LOG_ALPHA = 100_000, 100, 0.001


class RowCounter(nn.Module):
    """Counts the rows the model evaluates (the layout check's clean rows included)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        out: torch.Tensor = self.model(x)
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- 1. the table
def train_lenet(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """LeNet with Gaussian augmentation on Fashion-MNIST (cached in the output folder)."""
    path = Path(args.out).parent / f"{Path(args.out).name}-lenet.pt"
    torch.manual_seed(0)  # benchmark script: a fixed initialisation
    model = get_model("lenet", "fashion-mnist").to(device)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model.eval()
    train = load_dataset("fashion-mnist", "train", root=args.data_root)
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, generator=g)
    criterion = GaussianAugmentationLoss(
        args.sigma, generator=torch.Generator(device).manual_seed(1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    began = time.perf_counter()
    for epoch in range(args.epochs):
        criterion.set_epoch(epoch)
        model.train()
        for step, (inputs, targets) in enumerate(loader):
            if args.quick and step == 20:
                break
            loss = criterion(model, inputs.to(device), targets.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"lenet: epoch {epoch + 1}/{args.epochs} ({time.perf_counter() - began:.0f} s)")
    torch.save(model.state_dict(), path)
    return model.eval()


def table(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model = RowCounter(train_lenet(args, device))
    test = load_dataset("fashion-mnist", "test", root=args.data_root)
    skip = max(1, len(test) // args.num_certify)
    stop = skip * args.num_certify
    procedures = {
        "certify": Certify(n=args.n, n0=args.n0, alpha=args.alpha),
        "grid": RadiusGrid(tuple(args.radii), alpha=args.alpha, max_n=args.n, n0=args.n0),
    }
    out: dict[str, Any] = {"inputs": args.num_certify, "skip": skip, "arms": {}}
    results = {}
    for name, procedure in procedures.items():
        path = Path(f"{args.out}-{name}.tsv")
        for stale in (path, Path(f"{path}.json")):
            stale.unlink(missing_ok=True)
        smoothed = SmoothedClassifier(model, args.sigma)
        model.rows = 0
        sync(device)
        began = time.perf_counter()
        certify_dataset(
            smoothed, test, path, procedure, skip=skip, stop=stop, device=device, progress=False
        )
        sync(device)
        seconds = time.perf_counter() - began
        results[name] = read_results(path)
        drawn = int(results[name].n.sum()) + args.n0 * len(results[name])
        out["arms"][name] = {"seconds": seconds, "samples": drawn, "model_rows": model.rows}
        print(f"table: {name}: {drawn:,} samples in {seconds:.1f} s", flush=True)
    certify, grid = out["arms"]["certify"], out["arms"]["grid"]
    out["sample_saving"] = certify["samples"] / grid["samples"]
    out["wall_saving"] = certify["seconds"] / grid["seconds"]
    out["efficiency"] = out["wall_saving"] / out["sample_saving"]
    out["accuracy"] = {
        name: [100 * float(a) for a in certified_accuracy(r, radii=args.radii)]
        for name, r in results.items()
    }
    # what a bfloat16 certificate of this trained model would be about: its votes' disagreement
    # with float32 on the first certified images' estimation samples
    images = torch.stack([test[i][0] for i in range(0, stop, skip)][:20]).to(device)
    share = autocast_disagreement(
        SmoothedClassifier(model.model, args.sigma), images, num=min(args.n, 2000),
        generator=torch.Generator(device).manual_seed(0),
    )  # fmt: skip
    out["bf16_disagreement"] = float(share.mean())
    out["bf16_disagreement_max"] = float(share.max())
    return out


# ---------------------------------------------------------------------------- 2. ResNet-110
def throughput(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)  # benchmark script: fixed random weights and inputs
    model = get_model("cifar_resnet110", "cifar10").to(device).eval()
    x = torch.rand(args.resnet_inputs, 3, 32, 32, device=device)
    n = args.resnet_samples
    total = x.shape[0] * (n + 1)
    batch = SmoothedClassifier(model, 0.25).batch_size  # None: the device's default

    configs: dict[str, dict[str, Any]] = {
        "fp32 eager, standard layout": {"memory_format": "preserve"}
    }
    if device.type == "cpu":
        configs["fp32 eager, channels_last"] = {"memory_format": "channels_last"}
    configs["bf16 autocast"] = {"autocast": torch.bfloat16}
    if not args.no_compile:
        configs["fp32 compile"] = {"compile": True}
        configs["bf16 autocast + compile"] = {"autocast": torch.bfloat16, "compile": True}
    runs: dict[str, Callable[[], object]] = {}
    first_call: dict[str, float] = {}
    for name, settings in configs.items():
        smoothed = SmoothedClassifier(model, 0.25, **settings)

        def run(s: SmoothedClassifier = smoothed) -> object:
            return s.certify(x, n=n, n0=1, generator=torch.Generator(device).manual_seed(0))

        began = time.perf_counter()
        run()  # warm-up: the layout check, and compiling
        first_call[name] = time.perf_counter() - began
        runs[name] = run
    size = 128 if batch is None and device.type == "cpu" else (batch or 2048)
    noisy = [x[i % len(x)] + 0.25 * torch.randn(size, 3, 32, 32, device=device) for i in range(8)]

    floor_rows = -(-total // size) * size  # whole batches: at least the certify calls' samples

    def floor() -> None:
        with torch.inference_mode():
            for k in range(floor_rows // size):
                model(noisy[k % len(noisy)]).argmax(1)

    floor()
    rates: dict[str, list[float]] = {"floor fp32 eager": [], **{name: [] for name in runs}}
    for _ in range(args.rounds):
        for name, fn in [("floor fp32 eager", floor), *runs.items()]:
            sync(device)
            began = time.perf_counter()
            fn()
            sync(device)
            rows = floor_rows if name == "floor fp32 eager" else total
            rates[name].append(rows / (time.perf_counter() - began))
        print(
            "resnet110: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True
        )
    smoothed = SmoothedClassifier(model, 0.25)
    share = autocast_disagreement(
        smoothed, x, num=n, generator=torch.Generator(device).manual_seed(0)
    )
    return {
        "batch_size": size,
        "samples_per_input": n,
        "inputs": x.shape[0],
        "rates": {k: statistics.median(v) for k, v in rates.items()},
        "rounds": rates,
        "first_call_seconds": first_call,
        "bf16_disagreement": float(share.mean()),
    }


# ---------------------------------------------------------------------------- 3. projection
def vote_shares(path: Path, sigma: float) -> np.ndarray:
    """Per row of a released CERTIFY log: the plug-in share of the count its radius comes from.

    A certified row's radius is sigma * Phi^-1(p_lower), p_lower the Clopper-Pearson bound of
    the count at n = 100,000; the count is found by bisection and the share is (count + 1/2) /
    (n + 1). The radii are written to 3 digits, so the count is known to within a few votes.
    Abstentions get the share 1/2 (the candidate is then ruled out early or runs to max_n).
    """
    rows = read_results(path)
    certified = rows.prediction.numpy() >= 0
    target = norm.cdf(rows.radius.numpy() / sigma)
    low = np.full(len(target), LOG_N // 2)
    high = np.full(len(target), LOG_N)
    while np.any(low < high):  # per row, the smallest count whose bound reaches its radius
        mid = (low + high) // 2
        reaches = clopper_pearson_lower(mid, LOG_N, LOG_ALPHA) >= target
        high = np.where(reaches, mid, high)
        low = np.where(reaches, low, np.minimum(mid + 1, high))
    counts = np.where(certified, low, LOG_N // 2)
    return (counts + 0.5) / (LOG_N + 1)


def projection(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    out: dict[str, Any] = {"samples_per_second": rate, "sigmas": {}}
    for sigma, path in LOGS.items():
        shares = vote_shares(path, sigma)
        if args.quick:
            shares = shares[:40]
        grid = RadiusGrid(tuple(args.radii), alpha=LOG_ALPHA, max_n=LOG_N, n0=LOG_N0)
        cost = expected_cost(shares, grid, sigma, LOG_N)
        grid_samples = float(cost["samples"].sum() + LOG_N0 * len(shares))
        certify_samples = float((LOG_N + LOG_N0) * len(shares))
        out["sigmas"][str(sigma)] = {
            "inputs": len(shares),
            "grid_samples": grid_samples,
            "certify_samples": certify_samples,
            "saving": certify_samples / grid_samples,
            "grid_hours": grid_samples / rate / 3600,
            "certify_hours": certify_samples / rate / 3600,
        }
    return out


# ---------------------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"Device: {meta['device']} ({meta['machine']}); torch {meta['torch']}, "
        f"{meta['threads']} threads.",
        "",
    ]
    if "table" in result:
        t = result["table"]
        lines += [
            f"**The table** (LeNet, Fashion-MNIST, sigma = {meta['sigma']}, {t['inputs']} test "
            f"images, every {t['skip']}-th; CERTIFY n = {meta['n']:,}, n0 = {meta['n0']}; grid "
            f"{meta['radii']} with max_n = {meta['n']:,}; alpha = {meta['alpha']}; one stream "
            "each through certify_dataset):",
            "",
            "| arm | noisy samples | wall time (s) | "
            + " | ".join(f"r={r:g} (%)" for r in meta["radii"])
            + " |",
            "|---|---:|---:|" + "---:|" * len(meta["radii"]),
        ]
        for name, arm in t["arms"].items():
            accuracy = " | ".join(f"{a:.1f}" for a in t["accuracy"][name])
            lines.append(f"| {name} | {arm['samples']:,} | {arm['seconds']:.1f} | {accuracy} |")
        lines += [
            "",
            f"Sample saving {t['sample_saving']:.1f}x, wall-time saving {t['wall_saving']:.1f}x: "
            f"{t['efficiency']:.2f} of the sample saving reaches the wall clock. Under bfloat16 "
            f"autocast this LeNet's votes would differ from float32's on "
            f"{100 * t['bf16_disagreement']:.2f}% of the noisy samples (at most "
            f"{100 * t['bf16_disagreement_max']:.2f}% for one image).",
            "",
        ]
    if "resnet110" in result:
        r = result["resnet110"]
        lines += [
            f"**CIFAR ResNet-110 throughput** ({r['inputs']} inputs x {r['samples_per_input']:,} "
            f"samples, batch {r['batch_size']}; median of {meta['rounds']} rounds):",
            "",
            "| configuration | samples/s | x fp32 eager floor | first call (s) |",
            "|---|---:|---:|---:|",
        ]
        base = r["rates"]["floor fp32 eager"]
        for name, rate in r["rates"].items():
            first = r["first_call_seconds"].get(name)
            lines.append(
                f"| {name} | {rate:,.0f} | {rate / base:.2f} | "
                f"{'–' if first is None else f'{first:.1f}'} |"
            )
        lines += [
            "",
            f"bfloat16 and float32 votes disagree on {100 * r['bf16_disagreement']:.2f}% of the "
            "noisy samples (random weights: not a measure of a trained model).",
            "",
        ]
    if "projection" in result:
        p = result["projection"]
        lines += [
            f"**CIFAR-10 projection** (released SmoothMix CERTIFY logs, grid {meta['radii']}, "
            f"max_n = 100,000, alpha = 0.001; at {p['samples_per_second']:,.0f} samples/s, the "
            f"fastest ResNet-110 configuration on {meta['machine']}):",
            "",
            "| sigma | test inputs | grid samples | CERTIFY samples | saving | grid (h) | CERTIFY (h) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for sigma, s in p["sigmas"].items():
            lines.append(
                f"| {sigma} | {s['inputs']:,} | {s['grid_samples']:,.0f} | "
                f"{s['certify_samples']:,.0f} | {s['saving']:.1f}x | {s['grid_hours']:.2f} | "
                f"{s['certify_hours']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--n", type=int, default=10_000, help="CERTIFY's n, the grid's max_n")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--num-certify", type=int, default=200, help="test images certified")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resnet-inputs", type=int, default=2)
    parser.add_argument("--resnet-samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--parts", nargs="+", default=["table", "resnet110", "projection"])
    parser.add_argument("--data-root")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--out", default="certify_table", help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_certify, args.n, args.epochs, args.rounds = 8, 600, 1, 1
        args.resnet_inputs, args.resnet_samples, args.no_compile = 1, 20, True
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{k: getattr(args, k) for k in ("sigma", "radii", "n", "n0", "alpha", "rounds")},
    }
    result: dict[str, Any] = {"meta": meta}
    if "table" in args.parts:
        result["table"] = table(args, device)
    if "resnet110" in args.parts:
        result["resnet110"] = throughput(args, device)
    if "projection" in args.parts:
        rates = result.get("resnet110", {}).get("rates", {})
        best = max((v for k, v in rates.items() if not k.startswith("floor")), default=math.nan)
        result["projection"] = projection(args, best)
    text = markdown(result)
    print(text)
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
