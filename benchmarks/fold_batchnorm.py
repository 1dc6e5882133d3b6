"""What BatchNorm folding (``SmoothedClassifier(fold_batchnorm=...)``) gains, as a paired A/B.

For the CIFAR ResNet-20 (``rsmooth.models.get_model``, random weights, 21 BatchNorm layers) it
measures, alternating the two sides in every round so that a slow spell of a shared machine slows
both:

- the **bare forward pass** of the model as written and of the engine's folded copy over the same
  pre-generated noisy ``channels_last`` batches, at each batch size in ``--batch-sizes``;
- ``SmoothedClassifier.certify`` with ``fold_batchnorm="auto"`` and ``False``, otherwise at the
  defaults (``channels_last``), at a fixed batch size (``--certify-batch``) and with the
  automatic one (settled before the rounds).

It reports the median samples per second of each side and the per-round ratios folded ÷ as
written (their median, minimum and maximum), and needs no download.

    python benchmarks/fold_batchnorm.py --out perf_fold        # perf_fold.md and perf_fold.json
    python benchmarks/fold_batchnorm.py --quick --out /tmp/f   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rsmooth import SmoothedClassifier
from rsmooth.models import get_model

SHAPE = (3, 32, 32)


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def forward_pass(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[], object]:
    def run() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(batch).argmax(1)

    return run


def certify_call(smoothed: SmoothedClassifier, x: torch.Tensor, n: int, n0: int):
    def run() -> None:
        smoothed.certify(x, n=n, n0=n0, generator=torch.Generator().manual_seed(0))

    return run


def pair(
    folded: Callable[[], object], plain: Callable[[], object], samples: int, rounds: int
) -> dict[str, Any]:
    """Alternate the two sides ``rounds`` times (after a warm-up of each); samples per second."""
    folded()
    plain()
    rates: dict[str, list[float]] = {"folded": [], "as written": []}
    for _ in range(rounds):
        rates["folded"].append(samples / timed(folded))
        rates["as written"].append(samples / timed(plain))
    ratios = [a / b for a, b in zip(rates["folded"], rates["as written"], strict=True)]
    return {
        "rounds": rates,
        "folded": statistics.median(rates["folded"]),
        "as written": statistics.median(rates["as written"]),
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)  # benchmark script: fixed random weights and inputs
    model = get_model("cifar_resnet20", "cifar10").eval()
    x = torch.rand((args.inputs, *SHAPE))
    probe = SmoothedClassifier(model, args.sigma)
    probe.sample_counts(x[:1], num=1)
    copy = probe._inference_model(x)
    result: dict[str, Any] = {"batchnorm_folded": probe._folded.folded_layers(), "forward": {}}
    print(f"BatchNorm layers folded: {result['batchnorm_folded']}", flush=True)

    for size in args.batch_sizes:
        count = max(1, args.forward_samples // size)
        batches = [
            (x[i % len(x)] + args.sigma * torch.randn((size, *SHAPE))).contiguous(
                memory_format=torch.channels_last
            )
            for i in range(count)
        ]
        row = pair(
            forward_pass(copy, batches), forward_pass(model, batches), count * size, args.rounds
        )
        result["forward"][size] = row
        print(f"forward, batch {size}: {row['folded']:,.0f} vs {row['as written']:,.0f}/s; "
              f"ratio {row['ratio']}", flush=True)  # fmt: skip

    samples = args.inputs * (args.n + args.n0)
    for label, batch_size in (
        (f"batch {args.certify_batch}", args.certify_batch),
        ("auto", "auto"),
    ):
        sides = [
            SmoothedClassifier(model, args.sigma, batch_size=batch_size, fold_batchnorm=fold)
            for fold in ("auto", False)
        ]
        for smoothed in sides:  # the automatic batch size settles before the rounds
            for _ in range(5):
                if batch_size != "auto" or smoothed._chosen_batch_sizes():
                    break
                certify_call(smoothed, x, args.n, args.n0)()
        row = pair(*(certify_call(s, x, args.n, args.n0) for s in sides), samples, args.rounds)
        row["batch_size"] = [
            next(iter(s._chosen_batch_sizes().values()), None)
            if batch_size == "auto"
            else batch_size
            for s in sides
        ]
        result[f"certify {label}"] = row
        print(f"certify, {label}: {row['folded']:,.0f} vs {row['as written']:,.0f}/s; "
              f"ratio {row['ratio']}", flush=True)  # fmt: skip
    return result


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"Device: cpu ({meta['machine']}); torch {meta['torch']}, {meta['threads']} threads; "
        f"CIFAR ResNet-20, {result['batchnorm_folded']} BatchNorm layers folded; channels_last. "
        f"Samples per second, the median of {meta['rounds']} alternating rounds.",
        "",
        "| what | folded | as written | folded ÷ as written: median (min–max) |",
        "|---|---:|---:|---:|",
    ]
    rows = [(f"bare forward, batch {size}", row) for size, row in result["forward"].items()]
    rows += [(key, row) for key, row in result.items() if key.startswith("certify")]
    for what, row in rows:
        ratio = row["ratio"]
        lines.append(
            f"| {what} | {row['folded']:,.0f} | {row['as written']:,.0f} | "
            f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="BatchNorm folding: paired A/B on the CPU.")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--forward-samples", type=int, default=512)
    parser.add_argument("--certify-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", help="write OUT.md (table) and OUT.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.n0, args.rounds, args.forward_samples = 64, 10, 1, 64
        args.batch_sizes = [32]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join(["python", "benchmarks/fold_batchnorm.py", *(argv or sys.argv[1:])]),
        **{k: getattr(args, k) for k in ("inputs", "n", "n0", "sigma", "rounds")},
    }
    result = measure(args)
    table = markdown(result, meta)
    print(table)
    if args.out:
        Path(f"{args.out}.md").write_text(table)
        Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "result": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
