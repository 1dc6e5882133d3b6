"""What glibc's allocator costs certify on the CPU: fresh processes with and without
:func:`rsmooth.allocator.keep_freed_memory`.

A process's allocation history decides whether glibc's ``malloc`` keeps the memory that one
forward pass frees for the next (see :mod:`rsmooth.allocator`), so this measures what a user's
own script sees: each measurement is a fresh Python process that builds the model (random weights,
``rsmooth.models.get_model``), certifies once to warm up, then times ``--calls`` calls of
``SmoothedClassifier.certify`` at its defaults and counts the minor page faults of each
(``getrusage``). The configurations alternate within each round, so a slow spell of a shared
machine hits both alike:

- ``default``: the C library's allocator as the process starts (any ``MALLOC_*``, ``LD_PRELOAD``
  or ``GLIBC_TUNABLES`` of the environment removed);
- ``keep_freed_memory``: the same, with ``rsmooth.allocator.keep_freed_memory()`` called first
  (what ``rsmooth certify`` does in its own process).

With ``--compile`` each process also measures, interleaved with certify, the bare forward floor
(standard layout, the default batch size, pre-generated noisy batches: ``certify_throughput``'s
floor) and certify with ``compile=True``, so that compile's gain over the eager floor is measured
with and without the page faults.

    python benchmarks/allocator.py --out docs/performance/cpu_allocator
    python benchmarks/allocator.py --models cifar_resnet20 --compile --out docs/performance/cpu_allocator_compile
    python benchmarks/allocator.py --quick --out /tmp/alloc   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rsmooth._engine.batching import default_batch_size

HERE = Path(__file__).resolve().parent
CONFIGS = ("default", "keep_freed_memory")
#: (inputs per call, n) per model: calls of about a second on 2 CPU cores.
CALLS = {"lenet": (10, 2000), "cifar_resnet20": (2, 800)}
#: (inputs per call, n) with ``--quick``.
QUICK_CALL = (2, 200)

SNIPPET = """
import json, resource, statistics, sys, time
if {keep!r}:
    from rsmooth.allocator import keep_freed_memory
    assert keep_freed_memory()
import torch
sys.path.insert(0, {here!r})
from certify_throughput import SHAPES, build_model, floor, floor_batches
from rsmooth import SmoothedClassifier
from rsmooth._engine.batching import default_batch_size
torch.manual_seed(0)
model = build_model({name!r}).eval()
x = torch.rand(({inputs}, *SHAPES[{name!r}]))
samples = {inputs} * ({n} + 100)
def certify(smoothed):
    return lambda: smoothed.certify(x, n={n}, n0=100, generator=torch.Generator().manual_seed(0))
contenders = {{"certify": certify(SmoothedClassifier(model, 0.5))}}
if {compile!r}:
    size = default_batch_size("cpu")
    batches = floor_batches(x, size, samples, 0.5)
    contenders["floor"] = lambda: floor(model, batches, samples)
    contenders["compile"] = certify(SmoothedClassifier(model, 0.5, compile=True))
for run in contenders.values():
    run()  # warm-up (and compilation)
rates = {{key: [] for key in contenders}}
faults = {{key: [] for key in contenders}}
for _ in range({calls}):
    for key, run in contenders.items():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        began = time.perf_counter()
        run()
        rates[key].append(samples / (time.perf_counter() - began))
        faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{
    key: {{"rate": statistics.median(rates[key]), "faults": statistics.median(faults[key])}}
    for key in contenders
}}))
"""


def clean_env() -> dict[str, str]:
    """This environment without any allocator setting."""
    chosen = ("LD_PRELOAD", "GLIBC_TUNABLES")
    return {k: v for k, v in os.environ.items() if not (k in chosen or k.startswith("MALLOC_"))}


def call_size(name: str, args: argparse.Namespace) -> tuple[int, int]:
    """(inputs per call, n) for a model."""
    return QUICK_CALL if args.quick else CALLS[name]


def measure_once(name: str, config: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One fresh process: ``{contender: {"rate": samples/s, "faults": per call}}``."""
    inputs, n = call_size(name, args)
    code = SNIPPET.format(
        keep=config == "keep_freed_memory", here=str(HERE), name=name, inputs=inputs, n=n,
        calls=args.calls, compile=args.compile,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, check=True
    )
    result: dict[str, dict[str, float]] = json.loads(done.stdout.splitlines()[-1])
    return result


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    inputs, n = call_size(name, args)
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {config: [] for config in CONFIGS}
    for round_ in range(args.rounds):
        for config in CONFIGS:
            rounds[config].append(measure_once(name, config, args))
        print(
            f"{name}: round {round_ + 1}: "
            + "; ".join(
                f"{config}: "
                + ", ".join(
                    f"{key} {value['rate']:,.0f}/s ({value['faults']:,.0f} faults)"
                    for key, value in measured[-1].items()
                )
                for config, measured in rounds.items()
            ),
            flush=True,
        )
    samples = inputs * (n + 100)
    row: dict[str, Any] = {"model": name, "inputs": inputs, "n": n, "rounds": rounds}
    for config, measured in rounds.items():
        for key in measured[0]:
            rate = statistics.median(m[key]["rate"] for m in measured)
            fault = statistics.median(m[key]["faults"] for m in measured)
            label = config if key == "certify" else f"{config} {key}"
            row[label] = rate
            row[f"{label} faults per sample"] = fault / samples
        if "compile" in measured[0]:
            row[f"{config} compile ÷ floor"] = row[f"{config} compile"] / row[f"{config} floor"]
    ratios = [
        kept["certify"]["rate"] / default["certify"]["rate"]
        for default, kept in zip(rounds["default"], rounds["keep_freed_memory"], strict=True)
    ]
    row["ratio"] = row["keep_freed_memory"] / row["default"]
    row["ratio range"] = [min(ratios), max(ratios)]
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Fresh processes on {meta['machine']}, torch {meta['torch']}, {meta['libc']}, "
        f"transparent huge pages {meta['transparent_hugepage']}; "
        f"certify at defaults, sigma = 0.5, n0 = 100; the median over {meta['rounds']} rounds "
        f"of each process's median of {meta['calls']} calls.",
        "",
        "| model | default (samples/s) | page faults per sample | keep_freed_memory (samples/s) "
        "| page faults per sample | ratio | per round |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        low, high = row["ratio range"]
        lines.append(
            f"| {row['model']} | {row['default']:,.0f} | {row['default faults per sample']:.2f} "
            f"| {row['keep_freed_memory']:,.0f} | "
            f"{row['keep_freed_memory faults per sample']:.2f} | {row['ratio']:.2f} "
            f"| {low:.2f}–{high:.2f} |"
        )
    compiled = [row for row in rows if "default compile" in row]
    if compiled:
        lines += [
            "",
            "With `--compile`: the bare forward floor (standard layout, batch "
            f"{meta['batch_size']}, pre-generated noisy batches) and certify with compile=True, "
            "in the same processes (samples/s, page faults per sample).",
            "",
            "| model | allocator | floor | faults | compile | faults | compile ÷ floor |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in compiled:
            for config in CONFIGS:
                lines.append(
                    f"| {row['model']} | {config} | {row[f'{config} floor']:,.0f} "
                    f"| {row[f'{config} floor faults per sample']:.2f} "
                    f"| {row[f'{config} compile']:,.0f} "
                    f"| {row[f'{config} compile faults per sample']:.2f} "
                    f"| {row[f'{config} compile ÷ floor']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CALLS), choices=list(CALLS))
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per configuration")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also the bare forward floor and certify with compile=True, in each process",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 3 calls of 2 inputs at n = 200: a smoke run",
    )
    parser.add_argument("--out", help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 1, 3
    return args


def huge_pages() -> str:
    """The machine's transparent-huge-pages mode (it changes how many faults a block costs)."""
    try:
        modes = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    chosen = [word.strip("[]") for word in modes.split() if word.startswith("[")]
    return chosen[0] if chosen else "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if platform.libc_ver()[0] != "glibc":
        print("this measures glibc's malloc: the C library here is not glibc")
        return 1
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "libc": " ".join(platform.libc_ver()) or "unknown C library",
        "transparent_hugepage": huge_pages(),
        "rounds": args.rounds,
        "calls": args.calls,
        "batch_size": default_batch_size("cpu"),
        "compile": args.compile,
    }
    rows = [measure(name, args) for name in args.models]
    table = markdown(rows, meta)
    print(table)
    if args.out:
        Path(f"{args.out}.md").write_text(table)
        Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
