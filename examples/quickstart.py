"""Quickstart: train a small classifier with Gaussian noise on real offline data, then certify it.

Uses scikit-learn's 8x8 digits (shipped with scikit-learn, no download). Runs in seconds on a CPU:

    python examples/quickstart.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from torch import nn

from rsmooth import SmoothedClassifier
from rsmooth.metrics import format_table


def load_digits_split(
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-certify", type=int, default=200)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = time.perf_counter()
    model.train()
    for _ in range(args.epochs):  # Gaussian data augmentation (Cohen et al., 2019)
        for idx in torch.randperm(len(y_train)).split(64):
            inputs = x_train[idx] + args.sigma * torch.randn_like(x_train[idx])
            loss = nn.functional.cross_entropy(model(inputs), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    print(f"trained for {args.epochs} epochs in {time.perf_counter() - start:.1f} s")

    smoothed = SmoothedClassifier(model, sigma=args.sigma, batch_size=10_000)
    x, y = x_test[: args.num_certify], y_test[: args.num_certify]
    start = time.perf_counter()
    cert = smoothed.certify(
        x, n=args.n, n0=100, alpha=0.001, generator=torch.Generator().manual_seed(0)
    )
    print(
        f"certified {len(y)} test images with n={args.n} in {time.perf_counter() - start:.1f} s\n"
    )
    radii = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    print(
        format_table(
            {f"gaussian sigma={args.sigma}": cert},
            radii,
            targets={f"gaussian sigma={args.sigma}": y},
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
