"""Certification throughput: the bare-forward floor, rsmooth's certify (defaults, standard layout,
compile), and IBM ART's certify, with peak memory.

For a LeNet on 1x28x28 and a CIFAR ResNet-20 on 3x32x32 (``rsmooth.models.get_model``, random
weights: throughput does not depend on them), in one run and on one device, it measures samples
per second of

- the **floor**: a bare forward pass + argmax over pre-generated noisy batches (distinct ones,
  up to ``FLOOR_ELEMENTS`` elements in all, so the model reads new samples as it would in a
  real run), at each batch size in {32, 64, 128, 256, 512, 1024, 2048} (no noise generation, no
  counting), in the standard layout and, for images, in ``channels_last`` too (for one
  channel: channels-last strides, the same memory, from which convolutions choose their
  algorithm and their output's layout);
- ``SmoothedClassifier.certify`` at its defaults (the device's fixed batch size, 128 on the CPU
  and 2048 on CUDA; ``memory_format="auto"``); ratios to the best floor of any layout and batch
  size, and to the best floor in the standard layout (what a user's own loop runs);
- for images, the same with ``memory_format="preserve"`` (the standard layout);
- ``certify`` with ``compile=True`` at the default batch size (the time of the first call, which
  compiles, is reported); ratio to the best eager floor;
- ART 1.20.1's ``PyTorchRandomizedSmoothing.certify`` (``sample_size = n0``) at our default
  batch size (``--art-batch`` to choose) and at its own default (32), when
  ``adversarial-robustness-toolbox`` is importable (skipped with a message otherwise).

The contenders are measured in turn in each of ``--rounds`` rounds, and the median over rounds is
reported (the raw rounds are in the JSON): a slow spell of a shared machine then slows all of them
alike rather than one. Also the peak extra memory of certifying one input at ``--memory-n``
samples (CUDA: max allocated; CPU: peak resident-set growth, sampled every millisecond in a fresh
subprocess). It needs no download.

    python benchmarks/certify_throughput.py --out perf            # perf.md and perf.json
    python benchmarks/certify_throughput.py --quick --out /tmp/p  # a smoke run
    python benchmarks/certify_throughput.py --device cuda --models lenet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsmooth import SmoothedClassifier
from rsmooth._engine.batching import default_batch_size

HERE = Path(__file__).resolve().parent
SHAPES = {"lenet": (1, 28, 28), "cifar_resnet20": (3, 32, 32)}
FLOOR_BATCH_SIZES = (32, 64, 128, 256, 512, 1024, 2048)
ART_DEFAULT_BATCH = 32  # the default batch_size of ART 1.20.1's certify


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


#: The floor's pre-generated noisy samples: distinct batches of about this many elements in all
#: (more than a CPU's caches hold), cycled through, so the forward pass reads new samples.
FLOOR_ELEMENTS = 2**25


def floor_batches(x: torch.Tensor, batch_size: int, total: int, sigma: float) -> list[torch.Tensor]:
    """Distinct noisy batches for the floor: ``total`` samples, or ``FLOOR_ELEMENTS`` worth."""
    per_batch = batch_size * x[0].numel()
    count = max(1, min(-(-total // batch_size), FLOOR_ELEMENTS // per_batch))
    return [
        x[i % len(x)] + sigma * torch.randn((batch_size, *x.shape[1:]), device=x.device)
        for i in range(count)
    ]


def floor(model: nn.Module, batches: list[torch.Tensor], total: int) -> None:
    """Bare forward + argmax over pre-generated noisy batches, cycled to cover ``total``."""
    with torch.inference_mode():
        done = 0
        while done < total:
            batch = batches[(done // batches[0].shape[0]) % len(batches)]
            model(batch).argmax(1)
            done += batch.shape[0]


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

    def certify(smoothed: SmoothedClassifier) -> Callable[[], object]:
        generator = torch.Generator(device).manual_seed(0)
        return lambda: smoothed.certify(x, n=args.n, n0=args.n0, generator=generator)

    # every contender is measured once per round, in turn; the medians over rounds are
    # reported, so that a slow spell of the machine hits all of them alike
    contenders: dict[str, Callable[[], object]] = {}
    samples_of: dict[str, int] = {}
    # channels_last for images: for one channel, channels-last strides (the same memory, but
    # convolutions choose their algorithm and their output's layout from the strides)
    layouts = [""] + (["channels_last "] if x.dim() == 4 else [])
    for layout in layouts:
        for batch_size in FLOOR_BATCH_SIZES:
            samples = max(args.floor_samples, batch_size)
            batches = floor_batches(x, batch_size, samples, args.sigma)
            if layout:
                batches = [b.clone(memory_format=torch.channels_last) for b in batches]
            floor(model, batches, batch_size)  # warm-up
            key = f"floor {layout}{batch_size}"
            contenders[key] = lambda b=batches, s=samples: floor(model, b, s)
            samples_of[key] = samples

    smoothed = SmoothedClassifier(model, args.sigma)
    certify(smoothed)()  # warm-up (and the layout check)
    row["batch_size"] = default_batch_size(device.type)
    row["channels_last"] = "channels_last" in repr(smoothed)
    contenders["certify"] = certify(smoothed)
    if len(layouts) > 1:
        standard = SmoothedClassifier(model, args.sigma, memory_format="preserve")
        certify(standard)()
        contenders["certify preserve"] = certify(standard)
    row["compile_seconds"] = None
    if not args.no_compile:
        compiled = SmoothedClassifier(model, args.sigma, compile=True)
        began = time.perf_counter()
        certify(compiled)()  # compiles
        row["compile_seconds"] = time.perf_counter() - began
        contenders["compile"] = certify(compiled)
    print(
        f"{name}: batch size {row['batch_size']}; channels_last {row['channels_last']}; "
        f"compiled in {fmt(row['compile_seconds'], '.1f')} s",
        flush=True,
    )

    row["art_batch"] = args.art_batch or row["batch_size"]
    run_art = art_certify(model, x, args, row["art_batch"])
    if run_art is not None:
        run_art_small = art_certify(model, x[:1], args, row["art_batch"])
        if run_art_small is not None:
            run_art_small()  # warm-up
        contenders["art"] = run_art
        art_default = art_certify(model, x, args, ART_DEFAULT_BATCH)
        if art_default is not None and row["art_batch"] != ART_DEFAULT_BATCH:
            contenders["art default"] = art_default

    rates: dict[str, list[float]] = {key: [] for key in contenders}
    for round_ in range(args.rounds):
        for key, run in contenders.items():
            rates[key].append(samples_of.get(key, total) / timed(run, device))
        print(
            f"{name}: round {round_ + 1}: "
            + ", ".join(f"{key} {values[-1]:,.0f}" for key, values in rates.items()),
            flush=True,
        )
    row["rounds"] = rates
    middle = {key: statistics.median(values) for key, values in rates.items()}
    floors = {b: middle[f"floor {b}"] for b in FLOOR_BATCH_SIZES}
    row["floor"] = floors
    row["best_floor_batch"] = max(floors, key=lambda b: floors[b])
    row["best_floor"] = floors[row["best_floor_batch"]]
    row["floor_channels_last"] = {
        b: middle[f"floor channels_last {b}"] for b in FLOOR_BATCH_SIZES if len(layouts) > 1
    }
    cl_floors = row["floor_channels_last"]
    row["best_floor_channels_last"] = max(cl_floors.values()) if cl_floors else None
    row["best_floor_any"] = max(row["best_floor"], row["best_floor_channels_last"] or 0.0)
    row["certify"] = middle["certify"]
    row["certify_preserve"] = middle.get("certify preserve")
    row["certify_compile"] = middle.get("compile")
    row["art"] = middle.get("art")
    row["art_default"] = middle.get("art default", row["art"])
    row["ratio_certify_best_floor"] = row["certify"] / row["best_floor_any"]
    row["ratio_compile_eager_floor"] = (
        None if row["certify_compile"] is None else row["certify_compile"] / row["best_floor_any"]
    )
    row["ratio_certify_art_default"] = (
        None if row["art_default"] is None else row["certify"] / row["art_default"]
    )

    row["memory_gib"] = peak_memory(name, args, device, "rsmooth")
    row["art_memory_gib"] = (
        peak_memory(name, args, device, "art") if run_art is not None and args.art_memory else None
    )
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
        f"{meta['threads']} threads; allocator: {meta.get('allocator', 'not recorded')}; "
        f"{meta['inputs']} inputs, n0 = {meta['n0']}, "
        f"n = {meta['n']:,}, sigma = {meta['sigma']}. Samples per second, the median of "
        f"{meta['rounds']} rounds.",
        "",
        "| model | batch | bare-forward floor | floor, channels_last |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        for batch_size, rate in row["floor"].items():
            mark = " (best)" if batch_size == row["best_floor_batch"] else ""
            last = row["floor_channels_last"].get(batch_size)
            lines.append(f"| {row['model']} | {batch_size} | {rate:,.0f}{mark} | {fmt(last)} |")
    lines += [
        "",
        "| model | what | samples/s | × best floor (any layout) |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        best = row["best_floor_any"]
        entries = [
            (
                f"certify, defaults (batch {row['batch_size']}"
                + (", channels_last" if row["channels_last"] else "")
                + ")",
                row["certify"],
            ),
        ]
        if row["floor_channels_last"]:  # images: the layout's own rows
            entries += [
                ("certify, memory_format='preserve'", row["certify_preserve"]),
                ("best bare-forward floor, standard layout", row["best_floor"]),
                ("best bare-forward floor, channels_last", row["best_floor_channels_last"]),
            ]
        entries += [
            (
                f"certify, compile=True (first call {fmt(row['compile_seconds'], '.0f')} s)",
                row["certify_compile"],
            ),
            (f"ART 1.20.1 certify (batch {row['art_batch']})", row["art"]),
            (f"ART 1.20.1 certify at its default batch {ART_DEFAULT_BATCH}", row["art_default"]),
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
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements of each contender (median reported)"
    )
    parser.add_argument("--art-batch", type=int, help="ART's batch size (default: ours)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile row")
    parser.add_argument("--art-memory", action="store_true", help="also ART's peak memory")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", help="write OUT.md (tables) and OUT.json")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.inputs, args.n, args.n0, args.memory_n, args.rounds = 2, 500, 20, 2_000, 1
        args.floor_samples = args.floor_samples or 2048
    if args.floor_samples is None:
        args.floor_samples = args.inputs * (args.n + args.n0)
    return args


def allocator() -> str:
    """The memory allocator's settings from the environment (a preloaded library, its options,
    glibc's tunables): on the CPU they change the forward pass's speed, see the Performance page."""
    names = ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")
    found = [f"{k}={v}" for k, v in os.environ.items() if k in names or k.startswith("MALLOC_")]
    return "; ".join(sorted(found)) or "default (the C library's malloc)"


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
        "allocator": allocator(),
        **{k: getattr(args, k) for k in ("inputs", "n", "n0", "sigma", "memory_n", "rounds")},
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
