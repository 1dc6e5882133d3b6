"""Certify with fewer samples: sequential ``certify_radius`` against CERTIFY, on one engine.

A LeNet on Fashion-MNIST at sigma = 0.5 (a checkpoint, or trained here with Gaussian noise
augmentation for a few epochs); every k-th test image. Both arms run through the same
``SmoothedClassifier`` (same device, batch size and per-input seeds), in one run:

- CERTIFY: ``certify(n0=100, n=100,000, alpha=0.001)``;
- sequential: ``certify_radius(radius=[0.25, 0.5, 0.75, 1.0], max_n=100,000, n0=100,
  alpha=0.001)``;
- label mode (reported separately): the same with ``candidates`` = the labels (no selection).

Reported (markdown table and JSON under ``--out``): model rows evaluated per input (a counting
wrapper around the model; mean, median, 95th percentile), the ratio with a bootstrap interval,
the wall-time ratio, certified accuracy at each grid radius for both arms with the difference and
a paired bootstrap interval, the inputs on which the arms disagree with CERTIFY's estimated p_A,
and the savings and disagreements that the exact operating characteristic predicts from
CERTIFY's counts, next to the measured ones. ACR is deliberately not reported for the
sequential arm (its inputs stop early).

Nothing is downloaded: Fashion-MNIST is read from IDX files (``--data-root``).

    python benchmarks/certify_efficiency.py --device cuda --out bench/       # full size
    python benchmarks/certify_efficiency.py --quick --out /tmp/eff            # smoke run (CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from models import build_model  # noqa: E402

from rsmooth import GaussianAugmentationLoss, SmoothedClassifier  # noqa: E402
from rsmooth.datasets import load_dataset  # noqa: E402
from rsmooth.runner import input_seed  # noqa: E402
from rsmooth.sequential import RadiusGrid, expected_cost, plug_in_probabilities  # noqa: E402
from rsmooth.stats import radius_to_probability  # noqa: E402


class RowCounter(nn.Module):
    """Counts the rows (noisy samples) the model evaluates, padding included."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += int(x.shape[0])
        return self.model(x)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--checkpoint",
        help="LeNet weights: a state dict (or a checkpoint of examples/train.py); trained here "
        "when absent",
    )
    parser.add_argument("--save-checkpoint", help="save the LeNet trained here to this path")
    parser.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--max-n", type=int, default=100_000, help="sequential arm's max_n")
    parser.add_argument("--n", type=int, default=None, help="CERTIFY's n (default: --max-n)")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--inputs-per-call", type=int, default=50, help="inputs per engine call, both arms"
    )
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (no checkpoint)")
    parser.add_argument("--train-size", type=int, default=None, help="training images (all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--out", default="certify_efficiency", help="output folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20 images, max_n = n = 2000, 1 epoch on 2000 training images",
    )
    return parser


# ---------------------------------------------------------------------------- model
def train_lenet(args: argparse.Namespace, device: torch.device) -> nn.Module:
    data = load_dataset("fashion-mnist", "train", root=args.data_root, limit=args.train_size)
    images, labels = data.tensors
    model = build_model("lenet", (1, 28, 28), 10).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    criterion = GaussianAugmentationLoss(args.sigma, generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    order = torch.Generator().manual_seed(args.seed)
    model.train()
    for epoch in range(args.epochs):
        began = time.perf_counter()
        permutation = torch.randperm(len(images), generator=order)
        total = 0.0
        for start in range(0, len(images), 128):
            index = permutation[start : start + 128]
            x, y = images[index].to(device), labels[index].to(device)
            loss = criterion(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        print(
            f"train epoch {epoch + 1}/{args.epochs}: loss {total / len(images):.4f} "
            f"({time.perf_counter() - began:.1f} s)",
            file=sys.stderr,
        )
    model.eval()
    if args.save_checkpoint:
        torch.save(model.state_dict(), args.save_checkpoint)
    return model


def load_lenet(path: str, device: torch.device) -> nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") is not None:  # examples/train.py
        from models import load_checkpoint

        model, _ = load_checkpoint(path)
        return model.to(device).eval()
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    model = build_model("lenet", (1, 28, 28), 10)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.to(device).eval()


# ---------------------------------------------------------------------------- arms
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_arms(
    smoothed: SmoothedClassifier,
    counter: RowCounter,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: Sequence[int],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    n = args.max_n if args.n is None else args.n

    def gens(chunk: Sequence[int]) -> list[torch.Generator]:
        return [torch.Generator(device=device).manual_seed(input_seed(args.seed, i)) for i in chunk]

    def certify_all() -> dict[str, Any]:
        out: dict[str, list[Any]] = {"prediction": [], "radius": [], "count": []}
        for s in range(0, len(idx), args.inputs_per_call):
            chunk = idx[s : s + args.inputs_per_call]
            cert = smoothed.certify(
                x[s : s + len(chunk)], n=n, n0=args.n0, alpha=args.alpha, generator=gens(chunk)
            )
            out["prediction"] += cert.prediction.tolist()
            out["radius"] += cert.radius.tolist()
            out["count"] += cert.count.tolist()
        return out

    def sequential_all(labels: torch.Tensor | None = None) -> dict[str, Any]:
        out: dict[str, list[Any]] = {
            "prediction": [], "certified": [], "status": [], "num_samples": [], "count": [],
            "radius": [], "candidate": [],
        }  # fmt: skip
        looks: tuple[int, ...] = ()
        for s in range(0, len(idx), args.inputs_per_call):
            chunk = idx[s : s + args.inputs_per_call]
            cert = smoothed.certify_radius(
                x[s : s + len(chunk)],
                args.radii,
                alpha=args.alpha,
                max_n=args.max_n,
                n0=args.n0,
                candidates=None if labels is None else labels[s : s + len(chunk)],
                generator=gens(chunk),
            )
            looks = cert.looks
            for key in out:
                out[key] += getattr(cert, key).tolist()
        out["looks"] = list(looks)
        return out

    # warm-up of both arms on two inputs (not measured)
    warm = smoothed.certify(
        x[:2], n=min(n, 2000), n0=args.n0, alpha=args.alpha, generator=gens([0, 1])
    )
    del warm
    smoothed.certify_radius(
        x[:2], args.radii, alpha=args.alpha, max_n=args.max_n, n0=args.n0, generator=gens([0, 1])
    )
    results: dict[str, Any] = {}
    arms = [("certify", certify_all), ("sequential", sequential_all)]
    arms.append(("label", lambda: sequential_all(y)))  # label mode, reported separately
    for name, call in arms:
        _sync(device)
        counter.rows = 0
        began = time.perf_counter()
        results[name] = call()
        _sync(device)
        results[name]["seconds"] = time.perf_counter() - began
        results[name]["rows"] = counter.rows
    results["n"] = n
    return results


# ---------------------------------------------------------------------------- analysis
def _interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def analyse(
    results: dict[str, Any], labels: np.ndarray, idx: Sequence[int], args: argparse.Namespace
) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    n, n0, radii = results["n"], args.n0, list(args.radii)
    certify, seq = results["certify"], results["sequential"]
    size = len(labels)
    per_input_seq = np.asarray(seq["num_samples"]) + n0
    per_input_certify = np.full(size, n + n0)
    boot = rng.integers(0, size, (args.bootstrap, size))
    ratio = (n + n0) / per_input_seq.mean()
    ratio_boot = (n + n0) / per_input_seq[boot].mean(axis=1)

    c_pred, c_rad = np.asarray(certify["prediction"]), np.asarray(certify["radius"])
    s_pred, s_cert = np.asarray(seq["prediction"]), np.asarray(seq["certified"], dtype=bool)
    c_count = np.asarray(certify["count"])
    p_hat = (c_count + 0.5) / (n + 1.0)
    accuracy = []
    disagreements = []
    # the candidate's plug-in share sets the cost; CERTIFY's candidate where it abstained too
    p_plug, _ = plug_in_probabilities(c_count, np.full(size, n), labels, c_pred)
    # the arms select their candidates from independent selection samples (streams of their own)
    candidate = np.asarray(seq["candidate"])
    candidate_correct = candidate == labels
    same_candidate = bool(np.all((c_pred < 0) | (c_pred == candidate)))
    grid = RadiusGrid(tuple(radii), alpha=args.alpha, max_n=args.max_n, n0=args.n0)
    cost = expected_cost(p_plug, grid, args.sigma, n)
    for j, r in enumerate(radii):
        a = (c_pred == labels) & (c_rad >= r)
        b = (s_pred == labels) & s_cert[:, j]
        diff_boot = b[boot].mean(axis=1) - a[boot].mean(axis=1)
        p_a = cost["certify_certify"][:, j] * candidate_correct
        p_b = cost["certify_sequential"][:, j] * candidate_correct
        accuracy.append(
            {
                "radius": r,
                "certify": float(a.mean()),
                "sequential": float(b.mean()),
                "difference": float(b.mean() - a.mean()),
                "difference_interval": _interval(diff_boot),
                "disagreements": int((a != b).sum()),
                "predicted_disagreements": float((p_a * (1 - p_b) + p_b * (1 - p_a)).sum()),
                "predicted_certify": float(p_a.mean()),
                "predicted_sequential": float(p_b.mean()),
            }
        )
        p_star = float(radius_to_probability(r, args.sigma))
        for i in np.nonzero(a != b)[0].tolist():
            disagreements.append(
                {
                    "idx": int(idx[i]),
                    "label": int(labels[i]),
                    "radius": r,
                    "certify": bool(a[i]),
                    "sequential": bool(b[i]),
                    "certify_p_hat": float(p_hat[i]),
                    "distance_to_threshold": float(p_hat[i] - p_star),
                    "sequential_samples": int(seq["num_samples"][i]),
                    "sequential_status": int(seq["status"][i][j]),
                }
            )
    label_arm = results["label"]
    label_samples = np.asarray(label_arm["num_samples"], dtype=float)
    label_certified = np.asarray(label_arm["certified"], dtype=bool)
    label_mode = {
        "samples_per_input": {
            "mean": float(label_samples.mean()),
            "median": float(np.median(label_samples)),
            "p95": float(np.percentile(label_samples, 95)),
        },
        "samples_ratio": float((n + n0) / label_samples.mean()),
        "rows_evaluated": label_arm["rows"],
        "seconds": label_arm["seconds"],
        "certified_accuracy": [float(v) for v in label_certified.mean(axis=0)],
    }
    predicted = cost["samples"] + n0
    predicted_boot = predicted[boot].mean(axis=1)

    def summary(values: np.ndarray) -> dict[str, float]:
        return {
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95)),
        }

    return {
        "settings": {
            "num_images": size,
            "n": n,
            "n0": n0,
            "max_n": args.max_n,
            "alpha": args.alpha,
            "sigma": args.sigma,
            "radii": radii,
            "batch_size": args.batch_size,
            "inputs_per_call": args.inputs_per_call,
            "device": str(args.device),
            "looks": seq["looks"],
            "seed": args.seed,
        },
        "samples_per_input": {
            "certify": summary(per_input_certify.astype(float)),
            "sequential": summary(per_input_seq.astype(float)),
        },
        "rows_evaluated": {"certify": certify["rows"], "sequential": seq["rows"]},
        "rows_ratio": certify["rows"] / max(seq["rows"], 1),
        "samples_ratio": float(ratio),
        "samples_ratio_interval": _interval(ratio_boot),
        "seconds": {"certify": certify["seconds"], "sequential": seq["seconds"]},
        "wall_time_ratio": certify["seconds"] / max(seq["seconds"], 1e-12),
        "predicted_samples_per_input": float(predicted.mean()),
        "predicted_samples_interval": _interval(predicted_boot),
        "predicted_ratio": float((n + n0) / predicted.mean()),
        "certified_accuracy": accuracy,
        "disagreements": disagreements,
        "same_candidate": same_candidate,
        "label_mode": label_mode,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"LeNet, Fashion-MNIST, sigma = {s['sigma']}, {s['num_images']} test images, "
        f"alpha = {s['alpha']}, batch size {s['batch_size']}, device {s['device']}.",
        f"CERTIFY: n0 = {s['n0']}, n = {s['n']:,}. Sequential: grid {s['radii']}, "
        f"max_n = {s['max_n']:,}, n0 = {s['n0']}, {len(s['looks'])} looks.",
        "",
        "| | CERTIFY | sequential | ratio |",
        "|---|---|---|---|",
    ]
    c, q = report["samples_per_input"]["certify"], report["samples_per_input"]["sequential"]
    lo, hi = report["samples_ratio_interval"]
    lines += [
        f"| forward passes per input, mean | {c['mean']:,.0f} | {q['mean']:,.0f} | "
        f"{report['samples_ratio']:.1f}x (95% CI {lo:.1f}-{hi:.1f}) |",
        f"| median | {c['median']:,.0f} | {q['median']:,.0f} | |",
        f"| 95th percentile | {c['p95']:,.0f} | {q['p95']:,.0f} | |",
        f"| model rows evaluated (counted) | {report['rows_evaluated']['certify']:,} | "
        f"{report['rows_evaluated']['sequential']:,} | {report['rows_ratio']:.1f}x |",
        f"| wall time (s) | {report['seconds']['certify']:.2f} | "
        f"{report['seconds']['sequential']:.2f} | {report['wall_time_ratio']:.1f}x |",
        f"| predicted by the exact OC from CERTIFY's counts, mean | | "
        f"{report['predicted_samples_per_input']:,.0f} "
        f"(95% CI {report['predicted_samples_interval'][0]:,.0f}-"
        f"{report['predicted_samples_interval'][1]:,.0f}) | {report['predicted_ratio']:.1f}x |",
        "",
        "| radius | CERTIFY (%) | sequential (%) | difference (pp, 95% CI) | disagreements "
        "(predicted) |",
        "|---|---|---|---|---|",
    ]
    for row in report["certified_accuracy"]:
        lo, hi = row["difference_interval"]
        lines.append(
            f"| {row['radius']} | {100 * row['certify']:.1f} | {100 * row['sequential']:.1f} | "
            f"{100 * row['difference']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f}) | "
            f"{row['disagreements']} ({row['predicted_disagreements']:.1f}) |"
        )
    lab = report["label_mode"]
    lines += [
        "",
        "Label mode (``candidates=labels``, no selection samples), reported separately: "
        f"{lab['samples_per_input']['mean']:,.0f} samples per input on average (median "
        f"{lab['samples_per_input']['median']:,.0f}, 95th percentile "
        f"{lab['samples_per_input']['p95']:,.0f}), {lab['samples_ratio']:.1f}x fewer than "
        f"CERTIFY, {lab['seconds']:.2f} s; certified accuracy "
        + ", ".join(
            f"{100 * a:.1f}% at {r}"
            for r, a in zip(report["settings"]["radii"], lab["certified_accuracy"], strict=True)
        )
        + ".",
    ]
    if report["disagreements"]:
        lines += [
            "",
            "Disagreements (CERTIFY's estimated p_A and its distance to the radius's threshold):",
            "",
            "| idx | radius | CERTIFY | sequential | p_A (CERTIFY) | p_A - p* | samples |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in report["disagreements"]:
            lines.append(
                f"| {d['idx']} | {d['radius']} | {'yes' if d['certify'] else 'no'} | "
                f"{'yes' if d['sequential'] else 'no'} | {d['certify_p_hat']:.5f} | "
                f"{d['distance_to_threshold']:+.5f} | {d['sequential_samples']:,} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.num_images, args.max_n, args.epochs = min(args.num_images, 20), 2000, 1
        args.train_size = args.train_size or 2000
        args.n = args.n or 2000
        args.bootstrap = min(args.bootstrap, 500)
    device = torch.device(args.device)
    model = load_lenet(args.checkpoint, device) if args.checkpoint else train_lenet(args, device)
    counter = RowCounter(model).eval()
    smoothed = SmoothedClassifier(counter, sigma=args.sigma, batch_size=args.batch_size)
    test = load_dataset("fashion-mnist", "test", root=args.data_root)
    step = max(1, len(test) // args.num_images)
    idx = list(range(0, len(test), step))[: args.num_images]
    images, labels = test.tensors
    x = images[idx].to(device)
    results = run_arms(smoothed, counter, x, labels[idx].to(device), idx, args, device)
    report = analyse(results, labels[idx].numpy(), idx, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    (out / "certify_efficiency.md").write_text(table + "\n")
    (out / "certify_efficiency.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    print(f"\nwrote {out / 'certify_efficiency.md'} and {out / 'certify_efficiency.json'}")
    return 0 if all(math.isfinite(v) for v in report["seconds"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
