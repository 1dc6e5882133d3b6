"""Time one training step (forward + backward + SGD step) of each rsmooth criterion.

LeNet (conv5x5 1->20, pool, conv5x5 20->50, pool, FC 800->500->10) on random 1x28x28 inputs in
[0, 1], batch sizes 64 and 128. Times are medians over repeats after warm-up iterations, and are
reported relative to GaussianAugmentationLoss measured in the same run. SmoothMixLoss is also
compared with a minimal hand-batched implementation of the same algorithm (target <= 1.1x).

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/criteria_step.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SIGMA = 0.5
# MNIST configurations of the official code (algorithms.md, sections 4.6 and 5.6)
CONFIGS: dict[str, tuple[tuple, dict]] = {
    "GaussianAugmentationLoss": ((SIGMA,), {}),
    "StabilityLoss": ((SIGMA,), {}),
    "SmoothAdvLoss": ((SIGMA, 255 / 256, 10, 4), {}),
    "MACERLoss": ((SIGMA,), {}),
    "ConsistencyLoss": ((SIGMA,), {}),
    "SmoothMixLoss": ((SIGMA, 1.0, 4, 4, 5.0), {}),
}


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


def load_criteria() -> dict[str, nn.Module]:
    losses = importlib.import_module("rsmooth.losses")
    return {
        name: getattr(losses, name)(*args, **kwargs) for name, (args, kwargs) in CONFIGS.items()
    }


def smoothmix_reference(
    sigma: float, alpha: float, steps: int, m: int, eta: float
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A minimal hand-batched SmoothMix step (mix_step 0, no warm-up), no validation."""

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        noise = torch.randn((m * b, *x.shape[1:])) * sigma
        ym = y.repeat(m)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        adv = x
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            probs = model(adv.repeat(m, 1, 1, 1) + noise).softmax(1).reshape(m, b, -1).mean(0)
            loss = F.nll_loss(probs.clamp(min=1e-20).log(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, adv)
            g = g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8)
            adv = (adv + alpha * g).clamp(0, 1)
        adv = adv.detach()
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        logits = model(x.repeat(m, 1, 1, 1) + noise)
        natural = F.cross_entropy(logits, ym)
        f_hat = logits.softmax(1).reshape(m, b, -1).mean(0)
        lam = torch.rand(b) / 2
        mixed = (1 - lam.view(-1, 1, 1, 1)) * x + lam.view(-1, 1, 1, 1) * adv
        target = (1 - lam[:, None]) * f_hat + lam[:, None] / f_hat.shape[1]
        correct = (f_hat.argmax(1) == y).float().repeat(m)
        log_q = F.log_softmax(model(mixed.repeat(m, 1, 1, 1) + noise), 1)
        kl = F.kl_div(log_q, target.repeat(m, 1), reduction="none").sum(1)
        return natural + eta * (correct * kl).mean()

    return step


def time_steps(
    entries: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]],
    batch: int,
    warmup: int,
    repeats: int,
) -> dict[str, float]:
    """Median seconds per step of every entry; the entries are interleaved (round-robin) so
    that a slow period of a shared machine hits all of them alike."""
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    setups = {}
    for name in entries:
        torch.manual_seed(0)
        model = lenet()
        setups[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    times: dict[str, list[float]] = {name: [] for name in entries}
    for i in range(warmup + repeats):
        for name, loss_fn in entries.items():
            model, opt = setups[name]
            start = time.perf_counter()
            opt.zero_grad()
            loss_fn(model, x, y).backward()
            opt.step()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 5 repeats")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    warmup, repeats = (1, 5) if args.quick else (args.warmup, args.repeats)

    entries: dict[str, Callable] = dict(load_criteria())
    baseline = "GaussianAugmentationLoss"
    sm_args = CONFIGS["SmoothMixLoss"][0]
    entries["SmoothMix (hand-batched reference)"] = smoothmix_reference(*sm_args)

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"warm-up {warmup}, repeats {repeats} (median)"
    )
    header = f"{'criterion':<46}{'batch':>6}{'ms/step':>10}{'x baseline':>12}"
    print(header)
    print("-" * len(header))
    for batch in args.batch_sizes:
        results = time_steps(entries, batch, warmup, repeats)
        for name, seconds in results.items():
            ratio = seconds / results[baseline]
            print(f"{name:<46}{batch:>6}{1000 * seconds:>10.1f}{ratio:>12.2f}")
        ratio = results["SmoothMixLoss"] / results["SmoothMix (hand-batched reference)"]
        print(f"{'  SmoothMixLoss / hand-batched':<46}{batch:>6}{'':>10}{ratio:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
