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

    python benchmarks/allocator.py --out docs/performance/cpu_allocator
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

HERE = Path(__file__).resolve().parent
CONFIGS = ("default", "keep_freed_memory")
#: (inputs per call, n) per model: calls of about a second on 2 CPU cores.
CALLS = {"lenet": (10, 2000), "cifar_resnet20": (2, 800)}

SNIPPET = """
import json, resource, statistics, sys, time
if {keep!r}:
    from rsmooth.allocator import keep_freed_memory
    assert keep_freed_memory()
import torch
sys.path.insert(0, {here!r})
from certify_throughput import SHAPES, build_model
from rsmooth import SmoothedClassifier
torch.manual_seed(0)
model = build_model({name!r}).eval()
x = torch.rand(({inputs}, *SHAPES[{name!r}]))
smoothed = SmoothedClassifier(model, 0.5)
def call():
    smoothed.certify(x, n={n}, n0=100, generator=torch.Generator().manual_seed(0))
call()
rates, faults = [], []
for _ in range({calls}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    began = time.perf_counter()
    call()
    rates.append({inputs} * ({n} + 100) / (time.perf_counter() - began))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"rate": statistics.median(rates), "faults": statistics.median(faults)}}))
"""


def clean_env() -> dict[str, str]:
    """This environment without any allocator setting."""
    chosen = ("LD_PRELOAD", "GLIBC_TUNABLES")
    return {k: v for k, v in os.environ.items() if not (k in chosen or k.startswith("MALLOC_"))}


def measure_once(name: str, config: str, calls: int) -> dict[str, float]:
    inputs, n = CALLS[name]
    code = SNIPPET.format(
        keep=config == "keep_freed_memory", here=str(HERE), name=name, inputs=inputs, n=n,
        calls=calls,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    inputs, n = CALLS[name]
    rounds: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    for round_ in range(args.rounds):
        for config in CONFIGS:
            rounds[config].append(measure_once(name, config, args.calls))
        print(
            f"{name}: round {round_ + 1}: "
            + ", ".join(
                f"{c} {r[-1]['rate']:,.0f}/s ({r[-1]['faults']:,.0f} faults)"
                for c, r in rounds.items()
            ),
            flush=True,
        )
    samples = inputs * (n + 100)
    row: dict[str, Any] = {"model": name, "inputs": inputs, "n": n, "rounds": rounds}
    for config, values in rounds.items():
        row[config] = statistics.median(v["rate"] for v in values)
        row[f"{config} faults per sample"] = (
            statistics.median(v["faults"] for v in values) / samples
        )
    ratios = [
        k["rate"] / d["rate"]
        for d, k in zip(rounds["default"], rounds["keep_freed_memory"], strict=True)
    ]
    row["ratio"] = row["keep_freed_memory"] / row["default"]
    row["ratio range"] = [min(ratios), max(ratios)]
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Fresh processes on {meta['machine']}, torch {meta['torch']}, {meta['libc']}; "
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
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CALLS), choices=list(CALLS))
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per configuration")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 call: a smoke run")
    parser.add_argument("--out", help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 1, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if platform.libc_ver()[0] != "glibc":
        print("this measures glibc's malloc: the C library here is not glibc")
        return 1
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "libc": " ".join(platform.libc_ver()) or "unknown C library",
        "rounds": args.rounds,
        "calls": args.calls,
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
