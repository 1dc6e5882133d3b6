"""Train a base classifier for randomized smoothing with any of the rsmooth criteria.

One loop for every criterion: they all share the call ``loss = criterion(model, inputs, targets)``,
so only their construction differs (``CRITERIA``). Examples::

    python examples/train.py --dataset fashion-mnist --arch lenet --criterion gaussian --sigma 0.5
    python examples/train.py --criterion smoothmix --sigma 0.5 --num-noise 4 --num-steps 4 \\
        --step-size 1.0 --eta 5.0 --one-step-adversary --epochs 90 --out smoothmix.pt
    python examples/train.py --criterion smoothadv --epsilon 1.0 --num-steps 10 --num-noise 4
    python examples/train.py --criterion gaussian --sigma 0.25 --out gaussian025.pt
    python examples/train.py --criterion catrs --prior-from gaussian025.pt --prior prior.pt
    python examples/train.py --criterion adaptive --discard-epoch 42 --threshold 0.4 \\
        --reweight-every 10 --epsilon 0.25 --num-steps 6

Conventions (those of the authors' official code):

- inputs are ``[0, 1]`` pixels; normalisation is the model's first layer (none for MNIST-like
  data, the CIFAR-10 mean/std otherwise);
- SGD, momentum 0.9, weight decay 1e-4, StepLR with gamma 0.1; epoch ``e`` uses
  ``lr * 0.1 ** (e // lr_step)``. Defaults per dataset: MNIST-like 90 epochs, lr 0.01, step 30;
  CIFAR-10 150 epochs, lr 0.1, step 50;
- the official schedules, applied by ``criterion.set_epoch(epoch)`` at the start of every epoch
  ``e`` (0-based), with ``--warmup`` epochs (10): SmoothAdv's epsilon
  ``min(eps, (e + 1) * eps / 10)``; SmoothMix's ``w_e = min(1, (e + 1) / 10)``, which
  scales eta and the one-step cap; MACER with ``--deferred`` uses lambda 0 for the first
  ``lr_step`` epochs (until the first learning-rate drop);
  Sun et al.'s adaptive criterion turns its adversary on at ``--discard-epoch``;
- SmoothAdv, Consistency, SmoothMix, CAT-RS and Sun et al.'s adaptive noise take one optimizer
  step per B/m examples in the official code, so the default loader batch is ``256 // num_noise``
  for them (256 for the others);
- CAT-RS needs a prior table (``rsmooth.training.prediction_table``): ``--prior FILE`` loads a
  saved one; ``--prior-from CHECKPOINT`` computes it from a Gaussian model (the official recipe:
  sigma 0.25, 10,000 samples per training image) and saves it to ``--prior`` when given;
- ``--criterion adaptive`` (Sun et al.) runs the discard-then-reweight schedule
  (``rsmooth.training.EasySampleSchedule``): plain Gaussian training before ``--discard-epoch``,
  then examples with noisy accuracy below ``--threshold`` are dropped, the rest resampled with
  replacement by approximate certified radius (refreshed every ``--reweight-every`` epochs), and
  the adversary on the noise is on.

Under ``torchrun`` (``torchrun --nproc-per-node 4 examples/train.py ...``) every process trains on
its share of each batch (``--batch-size`` is the global batch, split evenly over the processes, with
a ``DistributedSampler``) with ``DistributedDataParallel`` and its own noise seed; rank 0 alone
logs and writes the checkpoint. ``--amp`` trains under autocast (bfloat16 on CPU, float16 with a
gradient scaler on CUDA) and ``--compile`` compiles the model with ``torch.compile``.

The checkpoint (``--out``) records sigma, the criterion and its hyperparameters, the architecture,
the normalisation, the dataset, the epoch, the per-epoch log and the state dicts;
``load_checkpoint(path)`` rebuilds the model. ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/models.py

from models import ARCHS, CHECKPOINT_FORMAT, build_model, load_checkpoint

from rsmooth.datasets import DATASETS, dataset_info, load_dataset
from rsmooth.training import EasySampleSchedule, IndexedDataset

__all__ = [
    "CHUNKED",
    "CRITERIA",
    "Criterion",
    "amp_settings",
    "batches",
    "load_checkpoint",
    "main",
    "noise_seed",
    "split_batch",
    "train",
    "training_step",
]

Criterion = nn.Module
Factory = Callable[[argparse.Namespace], tuple[type, dict[str, Any]]]


#: Seconds between two progress lines inside an epoch when tqdm is not installed.
PROGRESS_EVERY = 5.0


def batches(loader: Any, desc: str, show: bool) -> Iterator[Any]:
    """The batches of ``loader``, with progress inside the epoch on stderr when ``show``.

    A tqdm bar that disappears at the end of the epoch when tqdm is installed (the ``examples``
    extra), else a line every ``PROGRESS_EVERY`` seconds: batches done, seconds so far.
    """
    if not show:
        yield from loader
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
        return
    total = len(loader)
    began = shown = time.perf_counter()
    for done, batch in enumerate(loader, 1):
        yield batch
        now = time.perf_counter()
        if now - shown >= PROGRESS_EVERY and done < total:
            shown = now
            print(
                f"{desc}: batch {done}/{total} ({now - began:.0f} s)", file=sys.stderr, flush=True
            )


def _given(args: argparse.Namespace, **defaults: Any) -> dict[str, Any]:
    """The flags of ``defaults`` that the user set, else their default (None = the class default)."""
    out = {}
    for name, default in defaults.items():
        value = getattr(args, name)
        value = default if value is None else value
        if value is not None:
            out[name] = value
    return out


def _gaussian(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import GaussianAugmentationLoss

    return GaussianAugmentationLoss, {"sigma": args.sigma, **_given(args, num_noise=1)}


def _stability(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import StabilityLoss

    return StabilityLoss, {"sigma": args.sigma, **_given(args, lbd=None)}


def _smoothadv(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import SmoothAdvLoss

    # MNIST configuration of the papers: epsilon 255/256, T = 10, m = 4, PGD.
    kwargs = _given(args, epsilon=255 / 256, num_steps=10, num_noise=4)
    return SmoothAdvLoss, {"sigma": args.sigma, **kwargs, "attack": args.attack}


def _macer(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import MACERLoss

    kwargs = _given(args, num_noise=None, lbd=None, gamma=None, beta=None)
    return MACERLoss, {"sigma": args.sigma, **kwargs}


def _consistency(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import ConsistencyLoss

    return ConsistencyLoss, {
        "sigma": args.sigma,
        **_given(args, num_noise=None, lbd=None, eta=None),
    }


def _smoothmix(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import SmoothMixLoss

    # MNIST sigma = 0.5 configuration of the paper: alpha 1.0, T = 4, m = 4, eta 5.0.
    kwargs = _given(args, step_size=1.0, num_steps=4, num_noise=4, eta=5.0)
    kwargs["one_step_adversary"] = bool(args.one_step_adversary)
    return SmoothMixLoss, {"sigma": args.sigma, **kwargs}


def _catrs(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import CATRSLoss

    # The argparse defaults of the official code (m 4, epsilon 256/256, T 4, lambda 1).
    kwargs = _given(args, num_noise=4, epsilon=1.0, num_steps=4, lbd=1.0)
    return CATRSLoss, {"sigma": args.sigma, **kwargs, "confidence": args.confidence}


def _adaptive(args: argparse.Namespace) -> tuple[type, dict[str, Any]]:
    from rsmooth.losses import AdaptiveNoiseLoss

    # The CIFAR-10 sigma = 0.5 script of Sun et al. (m 4, epsilon 0.25, T 6); no (F)MNIST one exists.
    kwargs = _given(args, epsilon=0.25, num_steps=6, num_noise=4)
    return AdaptiveNoiseLoss, {
        "sigma": args.sigma,
        **kwargs,
        "adversarial_from": args.discard_epoch,
    }


#: Criterion name -> factory ``args -> (class, constructor kwargs)``.
CRITERIA: dict[str, Factory] = {
    "gaussian": _gaussian,
    "stability": _stability,
    "smoothadv": _smoothadv,
    "macer": _macer,
    "consistency": _consistency,
    "smoothmix": _smoothmix,
    "catrs": _catrs,
    "adaptive": _adaptive,
}

#: Criteria whose official code takes one optimizer step per B/m examples (algorithms.md §9.1).
CHUNKED = frozenset({"smoothadv", "consistency", "smoothmix", "catrs", "adaptive"})


def make_criterion(
    name: str, args: argparse.Namespace, generator: torch.Generator | None = None
) -> tuple[Criterion, dict[str, Any]]:
    """Build the criterion ``name`` from the flags; returns it and its hyperparameters."""
    cls, kwargs = CRITERIA[name](args)
    criterion = cls(**kwargs, **_schedule_kwargs(name, args), generator=generator)
    hparams = dict(kwargs)
    for field in getattr(cls, "_repr_fields", ()):  # fill in the class defaults
        if field in ("warmup", "adversarial"):  # schedules (SmoothMix, adaptive), set per epoch
            continue
        value = getattr(criterion, field, None)
        if isinstance(value, (bool, int, float, str)):
            hparams.setdefault(field, value)
    return criterion, hparams


def _schedule_kwargs(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments of the official schedule that ``criterion.set_epoch`` applies."""
    if name in ("smoothadv", "smoothmix"):
        return {"warmup_epochs": args.warmup}
    if name == "macer" and args.deferred and args.lr_step is not None:
        return {"deferred_until": args.lr_step - 1}  # lambda = 0 until the first LR drop
    return {}


def _augment_cifar(x: Tensor, generator: torch.Generator) -> Tensor:
    """RandomCrop(32, padding=4) and RandomHorizontalFlip on a batch (the CIFAR-10 pipeline)."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=generator).tolist()
    dx = torch.randint(0, 9, (b,), generator=generator).tolist()
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    out[flip] = out[flip].flip(-1)
    return out


def _resolve_defaults(args: argparse.Namespace) -> None:
    cifar_like = dataset_info(args.dataset).mean is not None
    epochs, lr, step = (150, 0.1, 50) if cifar_like else (90, 0.01, 30)
    args.epochs = epochs if args.epochs is None else args.epochs
    args.lr = lr if args.lr is None else args.lr
    args.lr_step = step if args.lr_step is None else args.lr_step
    if args.arch is None:
        args.arch = "cifar_resnet110" if cifar_like else "lenet"
    if getattr(args, "discard_epoch", None) is None:  # Sun et al.'s 70 of 150 epochs
        args.discard_epoch = round(args.epochs * 70 / 150)
    if args.out is None:
        args.out = f"checkpoints/{args.dataset}_{args.arch}_{args.criterion}_sigma{args.sigma}.pt"


def amp_settings(device_type: str) -> tuple[torch.dtype, bool]:
    """``--amp`` on ``device_type``: the autocast dtype, and whether a ``GradScaler`` is needed.

    float16 with loss scaling on CUDA; bfloat16 (float32's exponent range, no scaler) elsewhere.
    """
    if device_type == "cuda":
        return torch.float16, True
    return torch.bfloat16, False


def noise_seed(seed: int, rank: int) -> int:
    """The criterion's noise seed on ``rank``: ``seed + 1`` on rank 0 (as in a single process),
    offset by ``rank * 2**32`` elsewhere, so that no two ranks (or seeds below 2**32) share noise."""
    return seed + 1 + (rank << 32)


def split_batch(
    num_examples: int, batch_size: int, world_size: int, *, explicit: bool = True
) -> int:
    """The per-process batch for a global ``batch_size`` over ``world_size`` processes.

    Raises ``SystemExit`` with a message (on every rank, before any collective call, so nothing
    hangs) when the data cannot be split: fewer examples than processes, or an explicit
    ``--batch-size`` that is not a multiple of the world size. A default batch size is rounded
    down to a multiple of the world size instead.
    """
    if world_size <= 1:
        return batch_size
    if num_examples < world_size:
        raise SystemExit(
            f"cannot split {num_examples} training examples over {world_size} processes: "
            "each process needs at least one (raise --limit or use fewer processes)"
        )
    if batch_size % world_size:
        if explicit:
            raise SystemExit(
                f"--batch-size {batch_size} is the global batch and must be a multiple of the "
                f"world size {world_size} (e.g. {max(1, batch_size // world_size) * world_size})"
            )
        batch_size = max(world_size, batch_size - batch_size % world_size)
    return batch_size // world_size


def training_step(
    criterion: Criterion,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None = None,
    **criterion_kwargs: Any,
) -> Tensor:
    """One optimizer step: the loss under autocast (if ``amp_dtype``), backward through the scaler.

    ``criterion_kwargs`` go to the criterion (CAT-RS's ``prior``). A disabled ``scaler`` (bfloat16, float32) is a plain ``backward()`` and ``optimizer.step()``;
    an enabled one (float16) scales the loss, skips steps with non-finite gradients and adapts
    its scale. Returns the detached loss.
    """
    autocast = (
        contextlib.nullcontext()
        if amp_dtype is None
        else torch.autocast(inputs.device.type, dtype=amp_dtype)
    )
    with autocast:
        loss = criterion(model, inputs, targets, **criterion_kwargs)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _distributed() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (torchrun sets them)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world_size, int(os.environ.get("LOCAL_RANK", str(rank)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--criterion", choices=sorted(CRITERIA), default="gaussian")
    p.add_argument("--sigma", type=float, default=0.5, help="noise level (pixel units)")
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--data-root", default=None, help="folder of the dataset files")
    p.add_argument("--limit", type=int, default=None, help="train on the first LIMIT examples")
    p.add_argument(
        "--arch", choices=sorted(ARCHS), default=None, help="lenet (MNIST-like) or resnet110"
    )
    h = p.add_argument_group("criterion hyperparameters (unset: the paper's / class default)")
    h.add_argument("--num-noise", type=int, default=None, help="m: noise samples per input")
    h.add_argument("--lbd", type=float, default=None, help="lambda (stability, macer, consistency)")
    h.add_argument("--eta", type=float, default=None, help="eta (consistency, smoothmix)")
    h.add_argument("--gamma", type=float, default=None, help="MACER hinge margin")
    h.add_argument("--beta", type=float, default=None, help="MACER inverse temperature")
    h.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="L2 radius (smoothadv, catrs; pixel units) or step length (adaptive)",
    )
    h.add_argument("--num-steps", type=int, default=None, help="T: attack steps")
    h.add_argument("--step-size", type=float, default=None, help="SmoothMix step size alpha")
    h.add_argument("--attack", choices=["pgd", "ddn"], default="pgd", help="SmoothAdv attack")
    h.add_argument("--one-step-adversary", action="store_true", help="SmoothMix +one-step")
    h.add_argument("--deferred", action="store_true", help="MACER: lambda = 0 until lr-step")
    h.add_argument("--warmup", type=int, default=10, help="warm-up epochs (SmoothAdv, SmoothMix)")
    c = p.add_argument_group("CAT-RS (--criterion catrs)")
    c.add_argument("--prior", default=None, help="prior table file (torch.save of [N, K])")
    c.add_argument("--prior-from", default=None, help="Gaussian checkpoint to compute the prior")
    c.add_argument("--prior-sigma", type=float, default=0.25, help="noise level of the prior")
    c.add_argument("--prior-samples", type=int, default=10_000, help="samples per image")
    c.add_argument("--confidence", choices=["model", "prior"], default="model")
    a = p.add_argument_group("Sun et al. (--criterion adaptive)")
    a.add_argument("--discard-epoch", type=int, default=None, help="default 70/150 of --epochs")
    a.add_argument("--threshold", type=float, default=0.4, help="discard threshold tau")
    a.add_argument("--reweight-every", type=int, default=10, help="epochs between weights")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=None, help="default 90 (MNIST-like) / 150")
    o.add_argument("--batch-size", type=int, default=None, help="default 256, or 256 // m (§9.1)")
    o.add_argument("--lr", type=float, default=None, help="default 0.01 (MNIST-like) / 0.1")
    o.add_argument("--lr-step", type=int, default=None, help="StepLR step, default 30 / 50")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="checkpoint path (default under checkpoints/)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines, no progress")
    s = p.add_argument_group("scale (mixed precision, compile, torchrun)")
    s.add_argument(
        "--amp",
        action="store_true",
        help="autocast: bfloat16 on CPU, float16 with a GradScaler on CUDA",
    )
    s.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the model (backend: inductor unless given)",
    )
    s.add_argument(
        "--sync-batchnorm",
        action="store_true",
        help="under torchrun on GPUs, convert BatchNorm layers to SyncBatchNorm",
    )
    return p


def train(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """Run the training described by parsed ``args``; returns ``(model, checkpoint)``."""
    _resolve_defaults(args)
    rank, world_size, local_rank = _distributed()
    device = torch.device(args.device)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    if args.sync_batchnorm and world_size > 1 and device.type != "cuda":
        raise SystemExit(
            f"--sync-batchnorm needs CUDA devices; SyncBatchNorm does not run on {device}"
        )
    torch.manual_seed(args.seed)
    info = dataset_info(args.dataset)
    data = load_dataset(args.dataset, "train", root=args.data_root, limit=args.limit)
    noise = torch.Generator(device=device).manual_seed(noise_seed(args.seed, rank))
    criterion, hparams = make_criterion(args.criterion, args, noise)
    m = int(hparams.get("num_noise", 1))
    explicit_batch = args.batch_size is not None
    if args.batch_size is None:
        args.batch_size = max(1, 256 // m) if args.criterion in CHUNKED else 256
    # Checked on every rank before the process group starts: a clear error, never a hang.
    local_batch = split_batch(len(data), args.batch_size, world_size, explicit=explicit_batch)
    if world_size > 1 and args.criterion == "adaptive":
        raise SystemExit(
            "--criterion adaptive does not run under torchrun yet: its discard-then-reweight "
            "sampler draws the whole epoch in one process; train it with one process"
        )
    args.batch_size, args.world_size = local_batch * world_size, world_size
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    amp_dtype, needs_scaler = amp_settings(device.type)
    amp_dtype = amp_dtype if args.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and needs_scaler)

    model = build_model(args.arch, info.input_shape, info.num_classes, info.mean, info.std)
    if args.sync_batchnorm and world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    train_set: Dataset = TensorDataset(*data.tensors)
    prior = None  # CAT-RS: the per-example prior, looked up by dataset index
    if args.criterion == "catrs":
        prior = prior_table(args, train_set, info.num_classes, device)
        train_set = IndexedDataset(train_set)
    easy = None  # Sun et al.: the discard-then-reweight sampling schedule
    if args.criterion == "adaptive":
        easy = EasySampleSchedule(
            args.threshold,
            args.discard_epoch,
            sigma=args.sigma,
            reweight_every=args.reweight_every,
            generator=torch.Generator(device=device).manual_seed(args.seed + 4),
            progress=not args.quiet,
        )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.1)
    start_epoch, history = 0, []
    out = Path(args.out)
    if args.resume and out.is_file():
        _, saved = load_checkpoint(out, map_location=device)
        model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, history = saved["epoch"], saved["history"]
        if scaler.is_enabled() and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        if easy is not None and saved.get("easy_schedule") is not None:
            easy.load_state_dict(saved["easy_schedule"])
    net: nn.Module = model  # what the criterion calls; `model` is what the checkpoint saves
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        net = torch.compile(net, backend=args.compile)

    loader_generator = torch.Generator().manual_seed(args.seed + 2 + start_epoch + (rank << 32))
    dist_sampler = None
    if world_size > 1:  # each rank its own len(data) // world_size examples per epoch
        dist_sampler = DistributedSampler(
            train_set, num_replicas=world_size, rank=rank, seed=args.seed + 2, drop_last=True
        )
    loader = DataLoader(
        train_set,
        batch_size=local_batch,
        shuffle=dist_sampler is None,
        sampler=dist_sampler,
        drop_last=len(data) // world_size > local_batch,  # no size-1 BatchNorm batches
        generator=loader_generator,
    )
    augment = info.mean is not None  # CIFAR-10: random crop + flip
    log = (lambda _: None) if args.quiet or rank != 0 else print
    log(
        f"training {args.arch} on {args.dataset} ({len(data)} examples) with {criterion!r}, "
        f"batch {args.batch_size}, {args.epochs} epochs, lr {args.lr} (step {args.lr_step})"
        + (f", {world_size} processes" if world_size > 1 else "")
        + (f", autocast {amp_dtype}" if amp_dtype is not None else "")
    )
    checkpoint: dict[str, Any] = {}
    for epoch in range(start_epoch, args.epochs):
        criterion.set_epoch(epoch)  # the criterion's official schedule (warm-up, deferred terms)
        # the values the schedule gives this epoch (the hyperparameters themselves stay as set)
        schedule = {k: float(v) for k, v in criterion.scheduled.items()}
        if dist_sampler is not None:
            dist_sampler.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        total, count, terms = 0.0, 0, {}
        if easy is not None:  # this epoch's draw of the kept examples
            sampler = easy.sampler(epoch, model, train_set)
            loader = DataLoader(
                train_set,
                batch_size=args.batch_size,
                sampler=sampler,
                drop_last=len(sampler) > args.batch_size,
            )
        desc = f"epoch {epoch + 1}/{args.epochs}"
        for batch in batches(loader, desc, show=not args.quiet and rank == 0):
            inputs, targets = batch[0].to(device), batch[1].to(device)
            extra = {} if prior is None else {"prior": prior[batch[2]].to(device)}
            if augment:
                inputs = _augment_cifar(inputs, loader_generator)
            loss = training_step(
                criterion, net, inputs, targets, optimizer, scaler, amp_dtype, **extra
            )
            total += float(loss) * len(targets)
            count += len(targets)
            for key, value in getattr(criterion, "last_terms", {}).items():
                terms[key] = terms.get(key, 0.0) + value * len(targets)
        if world_size > 1:  # log the global averages, the same on every rank
            total, count, terms = _sum_over_ranks(total, count, terms, device)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": total / max(count, 1),
            **{k: v / max(count, 1) for k, v in terms.items()},
            **schedule,
            "time": time.perf_counter() - started,
        }
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"the loss diverged at epoch {epoch + 1}: {record}")
        history.append(record)
        log(
            f"epoch {epoch + 1:3d}/{args.epochs}  "
            + "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
        )
        checkpoint = _checkpoint(
            args, info, hparams, model, optimizer, scheduler, epoch + 1, history
        )
        if easy is not None:
            checkpoint["easy_schedule"] = easy.state_dict()
        if scaler.is_enabled():
            checkpoint["scaler"] = scaler.state_dict()
        if rank != 0:  # rank 0 alone writes the checkpoint
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        torch.save(checkpoint, partial)
        os.replace(partial, out)  # an interrupted save never leaves a broken checkpoint
    if not checkpoint:  # nothing left to train (resumed a finished run)
        checkpoint = _checkpoint(
            args, info, hparams, model, optimizer, scheduler, start_epoch, history
        )
    model.eval()
    return model, checkpoint


def _sum_over_ranks(
    total: float, count: int, terms: dict[str, float], device: torch.device
) -> tuple[float, int, dict[str, float]]:
    """All-reduce the epoch's loss sums and example count (one small collective per epoch)."""
    keys = sorted(terms)
    stats = torch.tensor([total, count, *(terms[k] for k in keys)], dtype=torch.float64)
    stats = stats.to(device)
    torch.distributed.all_reduce(stats)
    values = stats.tolist()
    return values[0], int(values[1]), dict(zip(keys, values[2:], strict=True))


def prior_table(
    args: argparse.Namespace, data: Dataset, num_classes: int, device: torch.device
) -> Tensor:
    """The CAT-RS prior ``[N, K]``: loaded from ``--prior``, or computed from ``--prior-from``."""
    from rsmooth.training import prediction_table

    path = None if args.prior is None else Path(args.prior)
    if path is not None and path.is_file():
        table = torch.load(path, map_location="cpu", weights_only=True)
    elif args.prior_from is not None:
        prior_model, saved = load_checkpoint(args.prior_from, map_location=device)
        if saved["sigma"] != args.prior_sigma:
            print(f"note: {args.prior_from} was trained at sigma {saved['sigma']}", file=sys.stderr)
        table = prediction_table(
            prior_model,
            data,
            args.prior_sigma,
            args.prior_samples,
            generator=torch.Generator(device=device).manual_seed(args.seed + 3),
            device=device,
            progress=not args.quiet,
        )
        if path is not None and _distributed()[0] == 0:  # computed once; rank 0 writes it
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(table, path.with_name(path.name + ".partial"))
            os.replace(path.with_name(path.name + ".partial"), path)
    elif path is not None:
        raise SystemExit(f"--prior {path} does not exist; give --prior-from CHECKPOINT to make it")
    else:
        raise SystemExit("--criterion catrs needs --prior FILE or --prior-from CHECKPOINT")
    expected = (len(data), num_classes)  # type: ignore[arg-type]
    if not isinstance(table, Tensor) or tuple(table.shape) != expected:
        shape = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
        raise SystemExit(
            "the prior must have one row per training image and one column per class, "
            f"{expected}, got {shape}"
        )
    return table.float()


def _checkpoint(args, info, hparams, model, optimizer, scheduler, epoch, history) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": args.arch,
        "dataset": args.dataset,
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "normalization": None
        if info.mean is None
        else {"mean": list(info.mean), "std": list(info.std)},
        "sigma": args.sigma,
        "criterion": args.criterion,
        "hparams": hparams,
        "epoch": epoch,
        "history": history,
        "args": {
            k: v
            for k, v in vars(args).items()
            if isinstance(v, (bool, int, float, str, type(None)))
        },
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit must be a positive integer, got {args.limit}")
    rank, world_size, _ = _distributed()
    owns_group = world_size > 1 and not torch.distributed.is_initialized()
    try:
        _, checkpoint = train(args)
    finally:
        if owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:
        print(
            f"saved {args.out} (epoch {checkpoint['epoch']}): {json.dumps(checkpoint['hparams'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
