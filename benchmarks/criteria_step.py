"""Time one training step (forward + backward + SGD step) of each rsmooth criterion, and of
IBM ART 1.20.1's randomized-smoothing estimators where ART has the method.

LeNet (conv5x5 1->20, pool, conv5x5 20->50, pool, FC 800->500->10) on random 1x28x28 inputs in
[0, 1], batch sizes 64 and 128, SGD (lr 0.01, momentum 0.9), every entry with its own copy of
the same initial weights. Times are medians over repeats after warm-up iterations, and are
reported relative to GaussianAugmentationLoss measured in the same run. SmoothMixLoss is also
compared with a minimal hand-batched implementation of the same algorithm (target <= 1.1x).

Against ART (``--art-batch``, 128 examples per loader batch): Gaussian augmentation
(``PyTorchRandomizedSmoothing``), SmoothAdv (``PyTorchSmoothAdv``), MACER (``PyTorchMACER``) and
SmoothMix (``PyTorchSmoothMix``), with the same sigma and method hyperparameters as the rsmooth
criterion they are paired with (``ART_METHODS``; differences are printed). ART has no stability
training, Consistency, CAT-RS or adaptive-noise estimator. The ART entries run in the same
round-robin as the criteria, so a slow period of the shared machine hits both sides alike.

How an ART step is timed: ART trains only through ``fit(x, y, batch_size, nb_epochs)``, whose
per-batch body is written inline in its epoch loop (there is no per-batch method to call, and a
copy of the loop body would time our copy, not ART). So an ART step is ``fit`` with
``nb_epochs=1`` on exactly one loader batch of examples: one pass of the loop body, which is
what a batch costs an ART user. It includes ``fit``'s per-call setup (label check, a
``TensorDataset`` and a shuffling ``DataLoader`` that collates the batch); the row "DataLoader
pass inside ART's fit" times that loader alone so it can be discounted. The time is per loader
batch: where the method's official code (and ART) takes one optimizer step per chunk of
``batch / m`` examples (SmoothMix), the paired rsmooth entry does the same.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/criteria_step.py --quick
    OMP_NUM_THREADS=1 python benchmarks/criteria_step.py --warmup 1 --repeats 5 --out criteria-step
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SIGMA = 0.5
# MNIST configurations of the official code (algorithms.md, sections 4.6 and 5.6); the steps are
# timed after the warm-up (full epsilon and eta), so the warm-ups are off
NO_WARMUP = {"warmup_epochs": 0}
CONFIGS: dict[str, tuple[tuple, dict]] = {
    "GaussianAugmentationLoss": ((SIGMA,), {}),
    "StabilityLoss": ((SIGMA,), {}),
    "SmoothAdvLoss": ((SIGMA, 255 / 256, 10, 4), NO_WARMUP),
    "MACERLoss": ((SIGMA,), {}),
    "ConsistencyLoss": ((SIGMA,), {}),
    "SmoothMixLoss": ((SIGMA, 1.0, 4, 4, 5.0), NO_WARMUP),
}
BASELINE = "GaussianAugmentationLoss"
REFERENCE = "SmoothMix (hand-batched reference)"
ART_VERSION = "1.20.1"
ART_HINT = f"pip install adversarial-robustness-toolbox=={ART_VERSION}"
LOADER = "DataLoader pass inside ART's fit (no training)"


@dataclass(frozen=True)
class ArtMethod:
    """One method on both sides: an rsmooth entry (a criterion, stepped once per chunk of the
    loader batch) and ART's estimator class with its constructor arguments."""

    method: str
    entry: str  # the rsmooth entry's name; a CONFIGS name means that very entry
    criterion: str  # rsmooth.losses class
    args: tuple
    art_class: str
    art_kwargs: dict[str, Any]
    chunks: int = 1  # optimizer steps per loader batch (one per chunk of batch / chunks examples)
    note: str = "same objective and hyperparameters"


ART_METHODS = [
    ArtMethod(
        "Gaussian augmentation",
        "GaussianAugmentationLoss",
        "GaussianAugmentationLoss",
        (SIGMA,),
        "PyTorchRandomizedSmoothing",
        {"scale": SIGMA},
    ),
    ArtMethod(
        "SmoothAdv (m = 1)",
        "SmoothAdvLoss (m = 1)",
        "SmoothAdvLoss",
        (SIGMA, 255 / 256, 10, 1),
        "PyTorchSmoothAdv",
        {"scale": SIGMA, "epsilon": 255 / 256, "num_steps": 10, "num_noise_vec": 1, "warmup": 1},
        note=(
            "m = 1 on both sides: ART's fit fails for num_noise_vec > 1 (it repeats the targets "
            "m times but not the outputs). Different attack: ART runs its generic L-inf PGD "
            "(eps_step 0.1, one iteration per call, predicted labels, attack batch 32, through "
            "NumPy) on the base classifier with one noise draw; rsmooth runs the paper's L2 PGD "
            "on the smoothed soft classifier"
        ),
    ),
    ArtMethod(
        "MACER",
        "MACERLoss",
        "MACERLoss",
        (SIGMA,),
        "PyTorchMACER",
        {"scale": SIGMA, "gaussian_samples": 16, "lmbda": 12.0, "gamma": 8.0, "beta": 16.0},
        note="same objective and hyperparameters (m = 16, lambda 12, gamma 8, beta 16)",
    ),
    ArtMethod(
        "SmoothMix",
        "SmoothMixLoss (4 steps on chunks of batch / 4)",
        "SmoothMixLoss",
        (SIGMA, 1.0, 4, 4, 5.0),
        "PyTorchSmoothMix",
        {
            "scale": SIGMA,
            "alpha": 1.0,  # ART's PGD step size is its `alpha` (also certify's failure rate)
            "num_steps": 4,
            "num_noise_vec": 4,
            "eta": 5.0,
            "warmup": 1,
            "mix_step": 0,
        },
        chunks=4,
        note=(
            "same hyperparameters (step 1, 4 steps, m = 4, eta 5); per loader batch both take 4 "
            "optimizer steps on chunks of batch / 4 examples x 4 noise draws, as the official "
            "code does and ART hard-codes (one step on the whole batch: the criteria table)"
        ),
    ),
]


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


def fresh_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    """LeNet with the same initial weights every time, and its SGD optimizer."""
    torch.manual_seed(0)  # benchmark script: identical initial weights for every entry
    model = lenet()
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def load_criteria() -> dict[str, nn.Module]:
    losses = importlib.import_module("rsmooth.losses")
    return {
        name: getattr(losses, name)(*args, **kwargs) for name, (args, kwargs) in CONFIGS.items()
    }


def import_art() -> tuple[ModuleType | None, str | None]:
    """ART's randomized-smoothing estimators and version, or ``(None, reason)``."""
    try:
        art = importlib.import_module("art")
        estimators = importlib.import_module("art.estimators.certification.randomized_smoothing")
    except ImportError as error:
        return None, f"ART not importable ({error}); {ART_HINT}"
    return estimators, getattr(art, "__version__", "unknown")


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


def criterion_step(
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    chunks: int = 1,
) -> Callable[[], None]:
    """One loader batch with an rsmooth criterion: one SGD step per chunk of the batch."""
    model, opt = fresh_model()
    pieces = list(zip(x.chunk(chunks), y.chunk(chunks), strict=True))

    def step() -> None:
        for xc, yc in pieces:
            opt.zero_grad()
            loss_fn(model, xc, yc).backward()
            opt.step()

    return step


def art_step(
    estimators: ModuleType, spec: ArtMethod, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One loader batch with ART's estimator: ``fit`` for one epoch on exactly one batch."""
    model, opt = fresh_model()
    estimator = getattr(estimators, spec.art_class)(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        optimizer=opt,
        device_type="cpu",
        **spec.art_kwargs,
    )
    xs, ys = x.numpy(), y.numpy()
    return lambda: estimator.fit(xs, ys, batch_size=len(xs), nb_epochs=1)


def loader_pass(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The data path of ART's fit alone: NumPy to tensors, a shuffling DataLoader, one batch."""
    from torch.utils.data import DataLoader, TensorDataset

    xs, ys = x.numpy(), y.numpy()

    def step() -> None:
        data = TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))
        for _ in DataLoader(data, batch_size=len(xs), shuffle=True):
            pass

    return step


def time_steps(
    steps: dict[str, Callable[[], None]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of every entry; the entries are interleaved (round-robin) so that a
    slow period of a shared machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return times


def batch_data(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    return x, y


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1000 * seconds:.1f}"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"torch {meta['torch']} ({meta['threads']} intra-op threads), ART {meta['art'] or 'not installed'}; "
        f"LeNet 1x28x28, sigma = {SIGMA}, SGD; warm-up {meta['warmup']}, median of "
        f"{meta['repeats']} repeats, all entries interleaved round-robin.",
        "",
        "| criterion | batch | ms/step | × Gaussian |",
        "|---|---:|---:|---:|",
    ]
    for row in result["criteria"]:
        lines.append(
            f"| {row['name']} | {row['batch']} | {ms(row['seconds'])} | {row['x_baseline']:.2f} |"
        )
    art = result["art"]
    lines += [
        "",
        f"Training steps against ART {meta['art'] or ART_VERSION}, ms per loader batch of ",
    ]
    lines[-1] += f"{art['batch']} examples:"
    if art["skipped"]:
        lines += ["", f"ART rows skipped: {art['skipped']}"]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| method | rsmooth | ART | ART / rsmooth |",
        "|---|---:|---:|---:|",
    ]
    for row in art["rows"]:
        lines.append(
            f"| {row['method']} | {ms(row['rsmooth_seconds'])} | {ms(row['art_seconds'])} | "
            f"{row['ratio']:.2f} |"
        )
    lines += ["", f"{LOADER}: {ms(art['loader_seconds'])} ms per batch.", ""]
    for row in art["rows"]:
        lines.append(
            f"- {row['method']}: rsmooth `{row['rsmooth_entry']}`, ART `{row['art_class']}`; "
            f"{row['note']}."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 5 repeats")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--art-batch", type=int, default=128, help="loader batch against ART")
    parser.add_argument("--no-art", action="store_true", help="skip the ART comparison")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="write OUT.md (tables) and OUT.json (every time)")
    args = parser.parse_args(argv)
    warmup, repeats = (1, 5) if args.quick else (args.warmup, args.repeats)

    estimators, art_version = (None, "skipped with --no-art") if args.no_art else import_art()
    skipped = None if estimators is not None else art_version
    if skipped:
        print(f"ART rows skipped: {skipped}")
    criteria: dict[str, Callable] = dict(load_criteria())
    criteria[REFERENCE] = smoothmix_reference(*CONFIGS["SmoothMixLoss"][0])
    losses = importlib.import_module("rsmooth.losses")

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"ART {art_version if estimators is not None else '-'}, "
        f"warm-up {warmup}, repeats {repeats} (median)",
        flush=True,
    )
    batches = list(dict.fromkeys(args.batch_sizes))
    if estimators is not None and args.art_batch not in batches:
        batches.append(args.art_batch)
    rows: list[dict[str, Any]] = []
    art_rows: list[dict[str, Any]] = []
    raw: dict[str, dict[str, list[float]]] = {}
    loader_seconds = None
    header = f"{'entry':<52}{'batch':>6}{'ms/step':>10}{'x baseline':>12}"
    print(header)
    print("-" * len(header))
    for batch in batches:
        x, y = batch_data(batch)
        steps: dict[str, Callable[[], None]] = {}
        if batch in args.batch_sizes:
            steps = {name: criterion_step(fn, x, y) for name, fn in criteria.items()}
        against_art = estimators is not None and batch == args.art_batch
        if against_art:
            for spec in ART_METHODS:
                if spec.entry not in steps:
                    criterion = getattr(losses, spec.criterion)(*spec.args)
                    if hasattr(criterion, "warmup_epochs"):  # ART's warmup 1: no warm-up
                        criterion.warmup_epochs = 0
                    steps[spec.entry] = criterion_step(criterion, x, y, spec.chunks)
                steps[f"ART {spec.art_class}"] = art_step(estimators, spec, x, y)
            steps[LOADER] = loader_pass(x, y)
        times = time_steps(steps, warmup, repeats)
        raw[str(batch)] = times
        med = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in med.items():
            ratio = seconds / med[BASELINE] if BASELINE in med else float("nan")
            print(f"{name:<52}{batch:>6}{1000 * seconds:>10.1f}{ratio:>12.2f}")
            if name in criteria:
                rows.append({"name": name, "batch": batch, "seconds": seconds, "x_baseline": ratio})
        if "SmoothMixLoss" in med:
            ratio = med["SmoothMixLoss"] / med[REFERENCE]
            print(f"{'  SmoothMixLoss / hand-batched':<52}{batch:>6}{'':>10}{ratio:>12.3f}")
        if against_art:
            loader_seconds = med[LOADER]
            for spec in ART_METHODS:
                ours, theirs = med[spec.entry], med[f"ART {spec.art_class}"]
                art_rows.append(
                    {
                        "method": spec.method,
                        "rsmooth_entry": spec.entry,
                        "rsmooth_seconds": ours,
                        "art_class": spec.art_class,
                        "art_kwargs": spec.art_kwargs,
                        "art_seconds": theirs,
                        "ratio": theirs / ours,
                        "note": spec.note,
                    }
                )
    if art_rows:
        print(f"\nAgainst ART {art_version}, ms per loader batch of {args.art_batch}:")
        for row in art_rows:
            print(
                f"  {row['method']:<24} rsmooth {ms(row['rsmooth_seconds']):>8}  "
                f"ART {ms(row['art_seconds']):>8}  ART/rsmooth {row['ratio']:.2f}"
            )
            print(f"    {row['note']}")

    result = {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "art": art_version if estimators is not None else None,
            "warmup": warmup,
            "repeats": repeats,
            "sigma": SIGMA,
            "argv": list(argv) if argv is not None else sys.argv[1:],
        },
        "criteria": rows,
        "art": {
            "batch": args.art_batch,
            "skipped": skipped,
            "rows": art_rows,
            "loader_seconds": loader_seconds,
        },
        "raw_seconds": raw,
    }
    if args.out:
        md, js = Path(f"{args.out}.md"), Path(f"{args.out}.json")
        md.write_text(markdown(result), encoding="utf-8")
        js.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
