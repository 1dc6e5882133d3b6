"""Certification throughput: the bare-forward floor, rsmooth's certify (automatic batch size and
compile), and IBM ART's certify, with peak memory.

For a LeNet on 1x28x28 and a CIFAR ResNet-20 on 3x32x32 (``rsmooth.models.get_model``, random
weights: throughput does not depend on them), in one run and on one device, it measures samples per second of

- the **floor**: a bare forward pass + argmax over a pre-generated noisy batch, at each batch
  size in {64, 128, 256, 512, 1024, 2048} (no noise generation, no counting);
- ``SmoothedClassifier.certify`` at its defaults (``batch_size="auto"``): a fresh classifier's
  first call, which includes the automatic batch-size tuning, and a second call; ratio to the
  best floor;
- ``certify`` with ``compile=True`` (after a warm-up call that compiles; the compile time is
  reported); ratio to the best eager floor;
- ART 1.20.1's ``PyTorchRandomizedSmoothing.certify`` (``sample_size = n0``) at the best floor's
  batch size, when ``adversarial-robustness-toolbox`` is importable (skipped with a message
  otherwise);

and the peak extra memory of certifying one input at ``--memory-n`` samples (CUDA: max allocated;
CPU: peak resident-set growth, sampled every millisecond in a fresh subprocess). It needs no
download.

    python benchmarks/certify_throughput.py --out perf            # perf.md and perf.json
    python benchmarks/certify_throughput.py --quick --out /tmp/p  # a smoke run
    python benchmarks/certify_throughput.py --device cuda --models lenet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsmooth import SmoothedClassifier

HERE = Path(__file__).resolve().parent
SHAPES = {"lenet": (1, 28, 28), "cifar_resnet20": (3, 32, 32)}
FLOOR_BATCH_SIZES = (64, 128, 256, 512, 1024, 2048)


def build_model(name: str) -> nn.Module:
    """``rsmooth.models.get_model`` when the package has it, else ``examples/models.py``."""
    try:
        from rsmooth.models import get_model  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        sys.path.insert(0, str(HERE.parent / "examples"))
        import models  # type: ignore[import-not-found]

        if name == "lenet":
            return models.LeNet(1, 10)
        return models.CifarResNet(20, 3, 10)
    dataset = "mnist" if name == "lenet" else "cifar10"
    return get_model(name, dataset)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    began = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - began


def floor(model: nn.Module, x: torch.Tensor, total: int, batch_size: int, sigma: float) -> None:
    """Bare forward + argmax over one pre-generated noisy batch, repeated to cover ``total``."""
    noise = torch.randn((batch_size, *x.shape[1:]), device=x.device) * sigma
    batch = x[:1] + noise
    with torch.inference_mode():
        done = 0
        while done < total:
            model(batch).argmax(1)
            done += batch_size


def art_certify(model: nn.Module, x: torch.Tensor, args: argparse.Namespace, batch_size: int):
    """ART's certify, or None (with the reason printed) when ART is not installed."""
    try:
        from art.estimators.certification.randomized_smoothing import (
            PyTorchRandomizedSmoothing,
        )
    except ImportError as error:
        print(f"ART skipped: {error} (pip install adversarial-robustness-toolbox==1.20.1)")
        return None
    classifier = PyTorchRandomizedSmoothing(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        device_type="gpu" if x.device.type == "cuda" else "cpu",
        sample_size=args.n0,
        scale=args.sigma,
        alpha=0.001,
    )
    data = x.cpu().numpy()
    return lambda: classifier.certify(data, n=args.n, batch_size=batch_size)


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)  # benchmark script: fixed random weights and inputs
    model = build_model(name).to(device).eval()
    x = torch.rand((args.inputs, *SHAPES[name]), device=device)
    total = args.inputs * (args.n + args.n0)
    row: dict[str, Any] = {"model": name, "inputs": args.inputs, "n": args.n, "n0": args.n0}

    floors = {}
    for batch_size in FLOOR_BATCH_SIZES:
        floor(model, x, batch_size, batch_size, args.sigma)  # warm-up
        samples = max(args.floor_samples, batch_size)
        floors[batch_size] = samples / timed(
            lambda b=batch_size, s=samples: floor(model, x, s, b, args.sigma), device
        )
        print(f"{name}: floor at batch {batch_size}: {floors[batch_size]:,.0f}/s", flush=True)
    best_batch = max(floors, key=lambda b: floors[b])
    row["floor"] = floors
    row["best_floor_batch"] = best_batch
    best = floors[best_batch]

    def certify(smoothed: SmoothedClassifier) -> Callable[[], object]:
        generator = torch.Generator(device).manual_seed(0)
        return lambda: smoothed.certify(x, n=args.n, n0=args.n0, generator=generator)

    smoothed = SmoothedClassifier(model, args.sigma)
    first = total / timed(certify(smoothed), device)
    second = total / timed(certify(smoothed), device)
    # None: the call was too small to tune (under 2% of it), so the device's default was used
    row["auto_batch_size"] = next(iter(smoothed._auto_batch_sizes.values()), None)
    row["certify_auto_first"] = first
    row["certify_auto"] = second
    print(f"{name}: certify auto ({row['auto_batch_size']}): {first:,.0f}/s, {second:,.0f}/s")

    row["certify_compile"] = row["compile_seconds"] = None
    if not args.no_compile:
        compiled = SmoothedClassifier(model, args.sigma, batch_size=best_batch, compile=True)
        small = x[:1]
        row["compile_seconds"] = timed(
            lambda: compiled.certify(small, n=best_batch, n0=args.n0), device
        )
        row["certify_compile"] = total / timed(certify(compiled), device)
        print(f"{name}: certify compile: {row['certify_compile']:,.0f}/s", flush=True)

    row["art"] = None
    run_art = art_certify(model, x, args, best_batch)
    if run_art is not None:
        run_art_small = art_certify(model, x[:1], args, best_batch)
        if run_art_small is not None:
            run_art_small()  # warm-up
        row["art"] = total / timed(run_art, device)
        print(f"{name}: ART certify: {row['art']:,.0f}/s", flush=True)

    row["memory_gib"] = peak_memory(name, args, device, "rsmooth")
    row["art_memory_gib"] = (
        peak_memory(name, args, device, "art") if run_art is not None and args.art_memory else None
    )
    row["best_floor"] = best
    return row


MEMORY_SNIPPET = """
import json, sys, threading, time, torch
sys.path.insert(0, {here!r})
import certify_throughput as bench
args = bench.parse_args({argv!r})
device = torch.device(args.device)
torch.manual_seed(0)
model = bench.build_model({name!r}).to(device).eval()
x = torch.rand((1, *bench.SHAPES[{name!r}]), device=device)
with torch.inference_mode():
    model(x)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
peak, done = [0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
before = rss()
thread = threading.Thread(target=watch)
thread.start()
args.n, args.inputs = args.memory_n, 1
if {what!r} == "rsmooth":
    bench.SmoothedClassifier(model, args.sigma).certify(x, n=args.memory_n, n0=args.n0)
else:
    bench.art_certify(model, x, args, 1024)()
done.set()
thread.join()
if device.type == "cuda":
    extra = torch.cuda.max_memory_allocated(device) - base
else:
    extra = max(peak[0], rss()) - before
print(json.dumps({{"extra_bytes": extra}}))
"""


def peak_memory(name: str, args: argparse.Namespace, device: torch.device, what: str) -> float:
    code = MEMORY_SNIPPET.format(here=str(HERE), argv=args.argv, name=name, what=what)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"] / 2**30


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Device: {meta['device']} ({meta['machine']}); torch {meta['torch']}, "
        f"{meta['threads']} threads; {meta['inputs']} inputs, n0 = {meta['n0']}, "
        f"n = {meta['n']:,}, sigma = {meta['sigma']}. Samples per second.",
        "",
        "| model | batch | bare-forward floor |",
        "|---|---:|---:|",
    ]
    for row in rows:
        for batch_size, rate in row["floor"].items():
            mark = " (best)" if batch_size == row["best_floor_batch"] else ""
            lines.append(f"| {row['model']} | {batch_size} | {rate:,.0f}{mark} |")
    lines += [
        "",
        "| model | what | samples/s | × best floor |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        best = row["best_floor"]
        entries = [
            (
                f"certify, defaults (auto → {row['auto_batch_size'] or 'default, untuned'}), "
                "first call incl. tuning",
                row["certify_auto_first"],
            ),
            ("certify, defaults, second call", row["certify_auto"]),
            (
                f"certify, compile=True (batch {row['best_floor_batch']}; compiled in "
                f"{fmt(row['compile_seconds'], '.0f')} s)",
                row["certify_compile"],
            ),
            (f"ART 1.20.1 certify (batch {row['best_floor_batch']})", row["art"]),
        ]
        for what, rate in entries:
            ratio = None if rate is None else rate / best
            lines.append(f"| {row['model']} | {what} | {fmt(rate)} | {fmt(ratio, '.3f')} |")
    lines += ["", f"Peak extra memory, one input, n = {meta['memory_n']:,}:", ""]
    lines += ["| model | rsmooth certify (GiB) | ART certify (GiB) |", "|---|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {fmt(row['memory_gib'], '.3f')} | "
            f"{fmt(row['art_memory_gib'], '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Certification throughput benchmark.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument(
        "--floor-samples", type=int, help="samples per floor measurement (default: the workload)"
    )
    parser.add_argument("--memory-n", type=int, default=100_000)
    parser.add_argument("--no-compile", action="store_true", help="skip the compile row")
    parser.add_argument("--art-memory", action="store_true", help="also ART's peak memory")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", help="write OUT.md (tables) and OUT.json")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.inputs, args.n, args.n0, args.memory_n = 2, 500, 20, 2_000
        args.floor_samples = args.floor_samples or 2048
    if args.floor_samples is None:
        args.floor_samples = args.inputs * (args.n + args.n0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    meta = {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{k: getattr(args, k) for k in ("inputs", "n", "n0", "sigma", "memory_n")},
    }
    print(json.dumps(meta), flush=True)
    rows = [measure(name, args, device) for name in args.models]
    table = markdown(rows, meta)
    print(table)
    if args.out:
        Path(f"{args.out}.md").write_text(table)
        Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
