"""``rsmooth certify``: load the model and the dataset, then certify through the dataset runner."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import os
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from rsmooth.cli._common import EXPORT_HINT, CommandError, Terminated, import_object

__all__ = ["certify"]


def _load_research_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    from rsmooth import models

    if args.checkpoint is None:
        raise CommandError(
            "give --model (package.module:factory or a model file), or --checkpoint with a "
            "research-format checkpoint ({'epoch', 'arch', 'state_dict', 'optimizer'})"
        )
    path = Path(args.checkpoint)
    if not path.is_file():
        raise CommandError(f"--checkpoint: no such file: {path}")
    normalization = args.normalization or args.dataset
    if normalization not in models.NORMALIZATION:
        option = "--normalization" if args.normalization else "--dataset"
        raise CommandError(
            f"{option} {normalization!r}: a research checkpoint does not record its dataset, "
            "which decides the normalisation layer; name one rsmooth knows "
            f"({', '.join(sorted(models.NORMALIZATION))}) with --dataset, or with "
            "--normalization when --dataset is a factory"
        )
    try:
        model = models.load_model(path, dataset=normalization, trusted=args.trust_checkpoint)
    except ValueError as error:
        raise CommandError(f"--checkpoint: {error}") from None
    return model.to(device)


def _load_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    if args.model is None:
        return _load_research_model(args, device)
    if args.normalization is not None:
        raise CommandError("--normalization only applies to a research checkpoint without --model")
    path = Path(args.model)
    if path.is_file():
        if args.checkpoint is not None:
            raise CommandError("--checkpoint only applies to a package.module:factory --model")
        if args.factory_loads_weights:
            raise CommandError(
                "--factory-loads-weights only applies to a package.module:factory --model"
            )
        if path.suffix == ".pt2":
            from torch.export.passes import move_to_device_pass

            try:
                program = torch.export.load(path)
            except Exception as error:
                raise CommandError(f"--model: {path} is not a torch.export file: {error}") from None
            _check_dynamic_batch(program, path)
            return move_to_device_pass(program, device).module()
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location=device)
        except Exception as error:
            raise CommandError(
                f"--model: {path} is not a TorchScript file ({str(error).splitlines()[0]}); "
                "save a torch.export program as .pt2, or use package.module:factory"
            ) from None
    if ":" not in args.model:
        raise CommandError(
            f"--model must be package.module:factory or an existing model file, got {args.model!r}"
        )
    if args.checkpoint is None and not args.factory_loads_weights:
        raise CommandError(
            f"--model {args.model} needs --checkpoint with the trained weights (without them "
            "the factory's random weights would be certified); if the factory loads its own "
            "weights, pass --factory-loads-weights"
        )
    if args.checkpoint is not None and args.factory_loads_weights:
        raise CommandError("give either --checkpoint or --factory-loads-weights, not both")
    factory = import_object(args.model, "--model")
    model = factory(**args.model_kwargs)
    if not isinstance(model, nn.Module):
        raise CommandError(
            f"--model: {args.model} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if args.checkpoint is not None:
        _load_checkpoint(model, Path(args.checkpoint), trusted=args.trust_checkpoint)
    return model.to(device)


def _check_dynamic_batch(program: Any, path: Path) -> None:
    """Refuse a torch.export program whose inputs have a fixed batch size."""
    user_inputs = set(getattr(program.graph_signature, "user_inputs", ()))
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        shape = getattr(node.meta.get("val"), "shape", None)
        if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
            raise CommandError(
                f"--model: {path} was exported with a fixed batch size of {shape[0]}; "
                + EXPORT_HINT
            )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies a certify run besides its settings, recorded in the results sidecar."""
    model_path = Path(args.model) if args.model is not None else None
    return {
        "model": args.model,
        "model_file_sha256": (
            _file_sha256(model_path) if model_path is not None and model_path.is_file() else None
        ),
        "model_kwargs": args.model_kwargs,
        "checkpoint_sha256": (
            None if args.checkpoint is None else _file_sha256(Path(args.checkpoint))
        ),
        "dataset": args.dataset,
        "split": None if ":" in args.dataset else args.split,
        "dataset_kwargs": args.dataset_kwargs,
        "input_range": None if args.input_range is None else list(args.input_range),
    }


def _load_checkpoint(model: nn.Module, path: Path, *, trusted: bool = False) -> None:
    from rsmooth import models

    if not path.is_file():
        raise CommandError(f"--checkpoint: no such file: {path}")
    try:
        models.load_model(path, model=model, trusted=trusted)
    except ValueError as error:
        raise CommandError(f"--checkpoint: {error}") from None


def _load_dataset(args: argparse.Namespace) -> Any:
    if ":" in args.dataset:
        dataset = import_object(args.dataset, "--dataset")(**args.dataset_kwargs)
    else:
        try:
            datasets = importlib.import_module("rsmooth.datasets")
        except ImportError:
            raise CommandError(
                f"--dataset {args.dataset!r}: rsmooth.datasets is not available in this "
                "install; give package.module:factory instead"
            ) from None
        names = getattr(datasets, "DATASETS", ())
        if names and args.dataset not in names:
            raise CommandError(
                f"--dataset must be one of {', '.join(names)} or package.module:factory, "
                f"got {args.dataset!r}"
            )
        dataset = datasets.load_dataset(
            args.dataset, args.split, root=args.data_root, **args.dataset_kwargs
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise CommandError(
            f"--dataset {args.dataset} gave {type(dataset).__name__}, not a dataset "
            "(len() and dataset[i] -> (input, label))"
        )
    return dataset


def _device(args: argparse.Namespace) -> torch.device:
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise CommandError(f"--device: not a device: {args.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CommandError(f"--device {args.device}: CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def certify(args: argparse.Namespace) -> int:
    from rsmooth.metrics import format_table
    from rsmooth.runner import certify_dataset
    from rsmooth.shards import Shard, distributed_group
    from rsmooth.smoothing import SmoothedClassifier

    if args.stop < -1 or args.stop == 0:
        raise CommandError(
            f"--max must be -1 (all) or a positive dataset index (certify inputs 0..MAX-1), "
            f"got {args.stop}"
        )
    procedure = _procedure(args)
    device = _device(args)
    dataset = _load_dataset(args)
    model = _load_model(args, device)
    smoothed = SmoothedClassifier(
        model,
        args.sigma,
        num_classes=args.num_classes,
        batch_size=args.batch_size,
        input_range=args.input_range,
        compile=args.compile,
        memory_format=args.memory_format,
    )
    shard = None if args.shard is None else Shard(args.shard[0], args.shard[1], "argument")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with distributed_group(device) if shard is None else contextlib.nullcontext():
            results = certify_dataset(
                smoothed,
                dataset,
                args.out,
                procedure,
                seed=args.seed,
                skip=args.skip,
                stop=None if args.stop == -1 else args.stop,
                device=device,
                shard=shard,
                merge=args.merge,
                progress=args.progress,
                identity=_run_identity(args),
                force=args.force,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    rank = int(os.environ.get("RANK", "0") or 0)
    if results.path is not None and Path(results.path) == Path(args.out):
        if rank == 0:
            print(format_table({Path(args.out).name: results}, fmt="markdown"))
    else:
        print(
            f"rsmooth certify: {len(results)} rows in {results.path}; the other parts are still "
            f"running (the last one merges them, or run: rsmooth merge {args.out})",
            file=sys.stderr,
        )
    return 0


def _procedure(args: argparse.Namespace) -> Any:
    """CERTIFY, or the radius grid with --radii."""
    from rsmooth.procedures import Certify
    from rsmooth.sequential import RadiusGrid

    if args.radii is None:
        if args.max_n is not None:
            raise CommandError("--max-n applies to the sequential mode only; give --radii too")
        return Certify(n=100_000 if args.n is None else args.n, n0=args.n0, alpha=args.alpha)
    if args.n is not None:
        raise CommandError(
            "--n is CERTIFY's fixed sample size; with --radii the sequential procedure stops "
            "each input as soon as its radii are decided: give the most samples per input with "
            "--max-n instead"
        )
    max_n = 100_000 if args.max_n is None else args.max_n
    return RadiusGrid(tuple(args.radii), alpha=args.alpha, max_n=max_n, n0=args.n0)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)
