"""Certification throughput: rsmooth's engine vs the bare-forward floor and a per-input loop.

Measures, in one run and on one device, samples per second of

(a) floor: a bare forward pass + argmax over pre-generated noisy batches of ``batch_size``;
(b) ``SmoothedClassifier.certify`` (n0 + n samples per input);
(c) a straightforward per-input loop in the style of the reference code (repeat one input, add
    ``randn``, argmax, count; n0 then n samples per input),

for a LeNet on 1x28x28 and a small CIFAR ResNet on 3x32x32, at n=10,000 with 20 inputs and at
n=100 with 1,000 inputs, and prints the ratios (b)/(a) and (b)/(c). It also reports the peak extra
memory of certifying one 3x32x32 input at n=100,000 (CUDA: max allocated; CPU: peak RSS growth,
sampled every millisecond in a fresh subprocess).

A tiny MLP on 1x8x8 is included too: there the cost per forward call dominates, which is what
filling forward batches across inputs saves (on a GPU this is the regime of every model).

    python benchmarks/certify_throughput.py            # full run
    python benchmarks/certify_throughput.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rsmooth import SmoothedClassifier


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def small_resnet() -> nn.Module:
    """A CIFAR ResNet-8 (one BasicBlock per stage, widths 16/32/64)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp-1x8x8": (tiny_mlp, (1, 8, 8)),
    "lenet-1x28x28": (lenet, (1, 28, 28)),
    "resnet8-3x32x32": (small_resnet, (3, 32, 32)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def floor(model: nn.Module, x: torch.Tensor, total: int, batch_size: int, sigma: float) -> None:
    """Bare forward + argmax over one pre-generated noisy batch, repeated to cover ``total``."""
    batch = x[:1].repeat((batch_size,) + (1,) * (x.dim() - 1)) + sigma * torch.randn(
        (batch_size,) + tuple(x.shape[1:]), device=x.device
    )
    with torch.inference_mode():
        done = 0
        while done < total:
            k = min(batch_size, total - done)
            model(batch[:k]).argmax(1)
            done += k


def per_input_loop(
    model: nn.Module, x: torch.Tensor, n0: int, n: int, batch_size: int, sigma: float
) -> None:
    """The reference code's pattern: one input at a time, n0 then n samples."""
    with torch.inference_mode():
        for i in range(x.shape[0]):
            for num in (n0, n):
                counts = torch.zeros(10, dtype=torch.long, device=x.device)
                remaining = num
                while remaining > 0:
                    k = min(batch_size, remaining)
                    batch = x[i : i + 1].repeat((k,) + (1,) * (x.dim() - 1))
                    noise = torch.randn_like(batch) * sigma
                    preds = model(batch + noise).argmax(1)
                    counts += torch.bincount(preds, minlength=10)
                    remaining -= k
            counts.cpu()


def throughput_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    rows = []
    for name, (factory, shape) in MODELS.items():
        model = factory().to(device).eval()
        for n, inputs in args.settings:
            x = torch.rand((inputs,) + shape, device=device)
            total = inputs * (n + args.n0)
            smoothed = SmoothedClassifier(model, args.sigma, batch_size=args.batch_size)
            # warm up every path once on a small problem
            floor(model, x, args.batch_size, args.batch_size, args.sigma)
            smoothed.certify(x[:2], n=min(n, 200), n0=args.n0)
            per_input_loop(model, x[:2], args.n0, min(n, 200), args.batch_size, args.sigma)
            t_floor = timed(lambda: floor(model, x, total, args.batch_size, args.sigma), device)
            g = torch.Generator(device).manual_seed(0)
            t_ours = timed(lambda: smoothed.certify(x, n=n, n0=args.n0, generator=g), device)
            t_loop = timed(
                lambda: per_input_loop(model, x, args.n0, n, args.batch_size, args.sigma), device
            )
            rows.append(
                {
                    "model": name,
                    "n": n,
                    "inputs": inputs,
                    "samples": total,
                    "floor/s": total / t_floor,
                    "certify/s": total / t_ours,
                    "loop/s": total / t_loop,
                    "certify/floor": t_floor / t_ours,
                    "certify/loop": t_loop / t_ours,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


MEMORY_SNIPPET = """
import json, sys, threading, time, torch
sys.path.insert(0, {bench_dir!r})
from certify_throughput import small_resnet
from rsmooth import SmoothedClassifier
device = torch.device({device!r})
model = small_resnet().to(device).eval()
x = torch.rand(1, 3, 32, 32, device=device)
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
before = rss()
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
thread = threading.Thread(target=watch)
thread.start()
if {what!r} == "certify":
    SmoothedClassifier(model, 0.5, batch_size={batch_size}).certify(x, n={n}, n0=100)
else:  # bare forward passes over batches of batch_size noisy copies (as many, up to 20)
    with torch.inference_mode():
        for _ in range(min(20, max(1, {n} // {batch_size}))):
            model(x.repeat({batch_size}, 1, 1, 1) + torch.randn({batch_size}, 3, 32, 32, device=device))
done.set()
thread.join()
if device.type == "cuda":
    extra = torch.cuda.max_memory_allocated(device) - base
else:
    extra = max(peak[0], rss()) - before
print(json.dumps({{"extra_bytes": extra}}))
"""


def peak_memory(device: torch.device, batch_size: int, n: int, what: str) -> float:
    import os

    code = MEMORY_SNIPPET.format(
        bench_dir=os.path.dirname(os.path.abspath(__file__)),
        device=str(device),
        batch_size=batch_size,
        n=n,
        what=what,
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"] / 2**30


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Certification throughput benchmark.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--memory-n", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    args.settings = [(1000, 4), (100, 100)] if args.quick else [(10_000, 20), (100, 1000)]
    if args.quick:
        args.memory_n = 5_000
    device = torch.device(args.device)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"batch_size={args.batch_size} n0={args.n0}"
    )
    rows = throughput_rows(args, device)
    header = [
        "model",
        "n",
        "inputs",
        "floor/s",
        "certify/s",
        "loop/s",
        "certify/floor",
        "certify/loop",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [
            str(row[h])
            if h in ("model", "n", "inputs")
            else f"{row[h]:,.0f}"
            if h.endswith("/s")
            else f"{row[h]:.3f}"
            for h in header
        ]
        print("| " + " | ".join(cells) + " |")
    for batch_size in sorted({args.batch_size, 400}):
        ours = peak_memory(device, batch_size, args.memory_n, "certify")
        bare = peak_memory(device, batch_size, args.memory_n, "forward")
        print(
            f"peak extra memory, resnet8, one 3x32x32 input, n={args.memory_n:,}, "
            f"batch_size={batch_size}: certify {ours:.3f} GiB; bare forwards of the same batch size {bare:.3f} GiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
