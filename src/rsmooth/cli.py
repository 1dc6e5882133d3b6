"""The ``rsmooth`` command line: ``certify``, ``report``, ``plan`` and ``merge``.

Run ``rsmooth --help`` or ``rsmooth COMMAND --help`` (also ``python -m rsmooth``). Errors in the
arguments or the files give a message on stderr (no traceback) and exit status 2; set
``RSMOOTH_DEBUG=1`` to get the full traceback instead. An interrupted ``certify`` exits with
128 + the signal number after writing its finished rows.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import json
import os
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch
from torch import nn

__all__ = ["build_parser", "main"]

_EPILOG_CERTIFY = """\
examples:
  rsmooth certify --model mypkg.models:lenet --checkpoint ckpt.pt --dataset mnist \\
      --sigma 0.5 --out results.tsv
  rsmooth certify --checkpoint released/checkpoint.pth.tar --dataset cifar10 \\
      --data-root ~/data --sigma 0.25 --skip 20 --out released.tsv   # research format
  rsmooth certify --model model.pt2 --dataset mypkg.data:test_set --sigma 0.25 \\
      --n 10000 --skip 20 --out quick.tsv
  torchrun --nproc-per-node 4 -m rsmooth certify ... --out results.tsv   # 4 shards, merged

Rerun the same command to resume an interrupted run: finished rows are kept. A
results file records its model (spec and checkpoint hash) and dataset; resuming it
with another one is refused unless --force is given.
"""

_EPILOG_MAIN = """\
Errors print one message and exit with status 2. Set RSMOOTH_DEBUG=1 to get the
full Python traceback instead (e.g. RSMOOTH_DEBUG=1 rsmooth certify ...).
"""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

_EPILOG_REPORT = """\
examples:
  rsmooth report results.tsv
  rsmooth report a.tsv b.tsv --labels "sigma 0.25" "sigma 0.5" --plot curves.png
  rsmooth report results.tsv --radii 0 0.5 1 1.5 2 --format csv
"""


_EPILOG_PLAN = """\
examples:
  rsmooth plan --sigma 0.5 --radii 0.25 0.5 0.75 1.0 --alpha 0.001 --max-n 100000
  rsmooth plan --sigma 0.5 --radii 0.25 0.5 0.75 1.0 --from results.tsv
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps the description, keeps the examples in the epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _CommandError(Exception):
    """A user error: printed as one message (no traceback), exit status 2."""


class _Terminated(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# ---------------------------------------------------------------------------- parser
def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"k\": 1}}', got {text!r}")
    return value


def _input_range(text: str) -> tuple[float, float] | None:
    if text.strip().lower() == "none":
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be LOW,HIGH like 0,1 or none, got {text!r}"
        ) from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"needs LOW < HIGH, got {text!r}")
    return low, high


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch size must be a positive integer or 'auto', got {text!r}"
        ) from None


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be INDEX/COUNT like 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"needs 0 <= INDEX < COUNT, got {text!r}")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    """The ``rsmooth`` argument parser (used by :func:`main` and by the docs).

    Example:
        >>> build_parser().parse_args(["report", "r.tsv"]).command
        'report'
    """
    parser = _Parser(
        prog="rsmooth",
        description="Randomized smoothing: certify a dataset, report and plot results files.",
        epilog=_EPILOG_MAIN,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    certify = commands.add_parser(
        "certify",
        help="certify a dataset into a resumable results file",
        description=(
            "Certify every selected input of a dataset with CERTIFY (Cohen et al., 2019) and "
            "write one tab-separated row per input (idx label predict radius correct time "
            "count n) to --out, resuming the file if it exists. Under torchrun or a SLURM "
            "job array each process certifies its shard and the parts are merged at the end."
        ),
        epilog=_EPILOG_CERTIFY,
        formatter_class=_Formatter,
    )
    model = certify.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="MODEL",
        help="package.module:factory (called to build the nn.Module; the current folder is "
        "importable), or a TorchScript (.pt) or torch.export (.pt2) file; leave it out for a "
        "research-format --checkpoint, which names its architecture",
    )
    model.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights for a factory model: a state_dict, or a dict with a 'state_dict' or "
        "'model' entry ('module.' and '_orig_mod.' levels from DataParallel and torch.compile "
        "are handled); without --model, a checkpoint of the research code ({'epoch', 'arch', "
        "'state_dict', 'optimizer'}, e.g. Cohen et al.'s released models), normalised for the "
        "named --dataset (rsmooth.models.load_model reads both)",
    )
    model.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read --checkpoint with torch.load(weights_only=False), which RUNS CODE FROM THE "
        "FILE: only for a checkpoint from a source you trust that weights_only=True refuses "
        "(e.g. one that also saved an argparse.Namespace or numpy values)",
    )
    model.add_argument(
        "--normalization",
        metavar="DATASET",
        help="for a research-format --checkpoint: the dataset whose normalisation its first "
        "layer applies (default: --dataset), e.g. cifar100 or imagenet with a factory --dataset",
    )
    model.add_argument(
        "--factory-loads-weights",
        action="store_true",
        help="the factory returns a trained model by itself, so no --checkpoint is needed "
        "(without it, a factory model needs --checkpoint: certifying random weights is refused)",
    )
    model.add_argument(
        "--model-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="keyword arguments for the model factory, e.g. '{\"num_classes\": 10}'",
    )
    data = certify.add_argument_group("data")
    data.add_argument(
        "--dataset",
        required=True,
        metavar="DATASET",
        help="a name from rsmooth.datasets (fashion-mnist, mnist-5k, digits, mnist, cifar10) or "
        "package.module:factory returning a dataset of (input, label) pairs",
    )
    data.add_argument("--split", default="test", help="split of a named dataset (default: test)")
    data.add_argument("--data-root", metavar="DIR", help="data folder of a named dataset")
    data.add_argument(
        "--dataset-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="keyword arguments for a dataset factory",
    )
    data.add_argument(
        "--input-range",
        type=_input_range,
        default=(0.0, 1.0),
        metavar="LOW,HIGH",
        help="every input value must lie in [LOW, HIGH] (default: 0,1, pixels scaled to [0, 1]); "
        "'none' turns the check off for inputs in another space",
    )
    data.add_argument(
        "--skip", type=int, default=1, help="certify every SKIP-th input (default: 1, all)"
    )
    data.add_argument(
        "--max",
        "--stop",
        type=int,
        default=-1,
        dest="stop",
        metavar="MAX",
        help="stop at dataset index MAX, exclusive (default: -1, the whole dataset); write "
        "--stop under torchrun, whose parser claims --max",
    )
    smoothing = certify.add_argument_group("smoothing")
    smoothing.add_argument("--sigma", type=float, required=True, help="noise level, as in training")
    smoothing.add_argument(
        "--n",
        "--num-samples",
        type=int,
        default=None,
        dest="n",
        help="CERTIFY's estimation samples per input (default: 100000; with --radii give "
        "--max-n); write --num-samples under torchrun, whose parser claims --n",
    )
    smoothing.add_argument(
        "--n0", type=int, default=100, help="selection samples per input (default: 100)"
    )
    smoothing.add_argument(
        "--alpha", type=float, default=0.001, help="failure probability (default: 0.001)"
    )
    smoothing.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        help="noisy samples per forward pass (default: 128 on the CPU, 2048 on CUDA), or "
        "'auto' to time a few sizes on the run's own batches; recorded with the results, never "
        "changes them",
    )
    smoothing.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model for certification (fixed batch shapes: it compiles once)",
    )
    smoothing.add_argument(
        "--memory-format",
        choices=("auto", "preserve", "channels_last"),
        default="auto",
        help="layout of the noisy batches: 'auto' (default) gives a CPU model image batches as "
        "channels_last when it accepts them with the same logits; 'preserve' keeps the "
        "dataset's layout; 'channels_last' always",
    )
    smoothing.add_argument("--num-classes", type=int, help="number of classes (default: inferred)")
    smoothing.add_argument(
        "--radii",
        type=float,
        nargs="+",
        metavar="R",
        help="sequential mode: decide certification at these sorted radii only, stopping each "
        "input as soon as every radius is decided (SmoothedClassifier.certify_radius); far "
        "fewer samples than CERTIFY, but no ACR (default: CERTIFY)",
    )
    smoothing.add_argument(
        "--max-n",
        type=int,
        metavar="N",
        help="sequential mode: most estimation samples per input (default: 100000)",
    )
    smoothing.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    run = certify.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="FILE", help="results file (tab-separated)")
    run.add_argument(
        "--device",
        help="device, e.g. cpu, cuda, cuda:1 (default: cuda if available, with LOCAL_RANK's GPU "
        "under torchrun, else cpu)",
    )
    run.add_argument(
        "--shard",
        type=_shard,
        metavar="INDEX/COUNT",
        help="certify only this shard, e.g. 0/4 (default: from torchrun or a SLURM array)",
    )
    run.add_argument(
        "--no-merge",
        dest="merge",
        action="store_false",
        help="leave the part files of a sharded run unmerged (merge later with rsmooth merge)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="resume --out even if it was written with another model, checkpoint or dataset",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show rows done, samples/s and time left on stderr (default: on)",
    )
    certify.set_defaults(handler=_certify)

    report = commands.add_parser(
        "report",
        help="certified-accuracy table and ACR of results files, and the standard plot",
        description=(
            "Print ACR and approximate certified accuracy (%) at radii for each results file "
            "(idx label predict radius [correct] ...; files of the reference codebases work), "
            "and optionally save the certified-accuracy-vs-radius plot. Each run's sigma, n, "
            "alpha and radius cap (from its settings file) go to stderr, with a warning when "
            "the runs differ in them."
        ),
        epilog=_EPILOG_REPORT,
        formatter_class=_Formatter,
    )
    report.add_argument("files", nargs="+", metavar="FILE", help="results files")
    report.add_argument(
        "--radii",
        type=float,
        nargs="+",
        metavar="R",
        help="radii of the accuracy columns (default: 0 0.25 ... 2.0, stopping at the largest "
        "radius cap of the runs when their settings files give it)",
    )
    report.add_argument(
        "--format",
        choices=("markdown", "csv", "text"),
        default="markdown",
        help="table format (default: markdown)",
    )
    report.add_argument(
        "--labels", nargs="+", metavar="NAME", help="a name per file (default: the file names)"
    )
    report.add_argument(
        "--plot", metavar="FILE", help="save the plot (.png, .pdf, .svg); needs rsmooth[plot]"
    )
    report.add_argument(
        "--max-radius", type=float, metavar="R", help="right end of the plot's radius axis"
    )
    report.set_defaults(handler=_report)

    plan = commands.add_parser(
        "plan",
        help="expected cost and power of sequential certification at a grid of radii",
        description=(
            "Print the look schedule of rsmooth certify --radii (SmoothedClassifier."
            "certify_radius) and, for a range of true vote shares p_A (or for the counts of an "
            "existing CERTIFY results file, --from), the expected estimation samples per input "
            "and the probability of certifying each radius, next to CERTIFY's. Exact (no "
            "sampling); assumes the candidate class is the one with share p_A."
        ),
        epilog=_EPILOG_PLAN,
        formatter_class=_Formatter,
    )
    plan.add_argument("--sigma", type=float, required=True, help="noise level")
    plan.add_argument(
        "--radii", type=float, nargs="+", required=True, metavar="R", help="sorted grid of radii"
    )
    plan.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    plan.add_argument(
        "--max-n", type=int, default=100_000, help="most estimation samples (default: 100000)"
    )
    plan.add_argument("--beta", type=float, help="futility level (default: alpha)")
    plan.add_argument("--growth", type=float, default=1.5, help="look ratio (default: 1.5)")
    plan.add_argument(
        "--n0", type=int, default=100, help="selection samples, added to both (default: 100)"
    )
    plan.add_argument(
        "--n",
        type=int,
        default=None,
        help="CERTIFY's estimation samples to compare with (default: --max-n)",
    )
    plan.add_argument(
        "--p",
        type=float,
        nargs="+",
        metavar="P",
        help="true vote shares to tabulate (default: 0.6 0.7 0.8 0.9 0.95 0.99 0.999 and each "
        "radius's threshold)",
    )
    plan.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="predict the cost on the inputs of a CERTIFY results file (count and n columns)",
    )
    plan.set_defaults(handler=_plan)

    merge = commands.add_parser(
        "merge",
        help="merge the part files of a sharded run into one file sorted by idx",
        description=(
            "Merge OUT.part-*-of-* (or the given parts) into OUT, sorted by idx. Fails, "
            "writing nothing, if a part is missing, an idx is duplicated, or rows of the "
            "recorded selection are missing (gaps)."
        ),
    )
    merge.add_argument("out", metavar="OUT", help="merged file to write")
    merge.add_argument(
        "parts", nargs="*", metavar="PART", help="part files (default: OUT.part-*-of-*)"
    )
    merge.set_defaults(handler=_merge)
    return parser


def _version() -> str:
    from rsmooth import __version__

    return __version__


# ---------------------------------------------------------------------------- loading
def _import_object(spec: str, option: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise _CommandError(f"{option} must be package.module:name, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise _CommandError(f"{option}: cannot import {module_name!r}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise _CommandError(f"{option}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise _CommandError(f"{option}: {spec!r} is not callable")
    return target


def _load_research_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    from rsmooth import models

    if args.checkpoint is None:
        raise _CommandError(
            "give --model (package.module:factory or a model file), or --checkpoint with a "
            "research-format checkpoint ({'epoch', 'arch', 'state_dict', 'optimizer'})"
        )
    path = Path(args.checkpoint)
    if not path.is_file():
        raise _CommandError(f"--checkpoint: no such file: {path}")
    normalization = args.normalization or args.dataset
    if normalization not in models.NORMALIZATION:
        option = "--normalization" if args.normalization else "--dataset"
        raise _CommandError(
            f"{option} {normalization!r}: a research checkpoint does not record its dataset, "
            "which decides the normalisation layer; name one rsmooth knows "
            f"({', '.join(sorted(models.NORMALIZATION))}) with --dataset, or with "
            "--normalization when --dataset is a factory"
        )
    try:
        model = models.load_model(path, dataset=normalization, trusted=args.trust_checkpoint)
    except ValueError as error:
        raise _CommandError(f"--checkpoint: {error}") from None
    return model.to(device)


def _load_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    if args.model is None:
        return _load_research_model(args, device)
    if args.normalization is not None:
        raise _CommandError("--normalization only applies to a research checkpoint without --model")
    path = Path(args.model)
    if path.is_file():
        if args.checkpoint is not None:
            raise _CommandError("--checkpoint only applies to a package.module:factory --model")
        if args.factory_loads_weights:
            raise _CommandError(
                "--factory-loads-weights only applies to a package.module:factory --model"
            )
        if path.suffix == ".pt2":
            from torch.export.passes import move_to_device_pass

            try:
                program = torch.export.load(path)
            except Exception as error:
                raise _CommandError(
                    f"--model: {path} is not a torch.export file: {error}"
                ) from None
            _check_dynamic_batch(program, path)
            return move_to_device_pass(program, device).module()
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location=device)
        except Exception as error:
            raise _CommandError(
                f"--model: {path} is not a TorchScript file ({str(error).splitlines()[0]}); "
                "save a torch.export program as .pt2, or use package.module:factory"
            ) from None
    if ":" not in args.model:
        raise _CommandError(
            f"--model must be package.module:factory or an existing model file, got {args.model!r}"
        )
    if args.checkpoint is None and not args.factory_loads_weights:
        raise _CommandError(
            f"--model {args.model} needs --checkpoint with the trained weights (without them "
            "the factory's random weights would be certified); if the factory loads its own "
            "weights, pass --factory-loads-weights"
        )
    if args.checkpoint is not None and args.factory_loads_weights:
        raise _CommandError("give either --checkpoint or --factory-loads-weights, not both")
    factory = _import_object(args.model, "--model")
    model = factory(**args.model_kwargs)
    if not isinstance(model, nn.Module):
        raise _CommandError(
            f"--model: {args.model} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if args.checkpoint is not None:
        _load_checkpoint(model, Path(args.checkpoint), trusted=args.trust_checkpoint)
    return model.to(device)


_EXPORT_HINT = (
    "export it with a dynamic batch dimension, e.g. torch.export.export(model, (x,), "
    'dynamic_shapes=({0: torch.export.Dim("batch")},)) (rsmooth feeds batches of '
    "--batch-size noisy copies and a smaller last batch)"
)


def _check_dynamic_batch(program: Any, path: Path) -> None:
    """Refuse a torch.export program whose inputs have a fixed batch size."""
    user_inputs = set(getattr(program.graph_signature, "user_inputs", ()))
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        shape = getattr(node.meta.get("val"), "shape", None)
        if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
            raise _CommandError(
                f"--model: {path} was exported with a fixed batch size of {shape[0]}; "
                + _EXPORT_HINT
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
        raise _CommandError(f"--checkpoint: no such file: {path}")
    try:
        models.load_model(path, model=model, trusted=trusted)
    except ValueError as error:
        raise _CommandError(f"--checkpoint: {error}") from None


def _load_dataset(args: argparse.Namespace) -> Any:
    if ":" in args.dataset:
        dataset = _import_object(args.dataset, "--dataset")(**args.dataset_kwargs)
    else:
        try:
            datasets = importlib.import_module("rsmooth.datasets")
        except ImportError:
            raise _CommandError(
                f"--dataset {args.dataset!r}: rsmooth.datasets is not available in this "
                "install; give package.module:factory instead"
            ) from None
        names = getattr(datasets, "DATASETS", ())
        if names and args.dataset not in names:
            raise _CommandError(
                f"--dataset must be one of {', '.join(names)} or package.module:factory, "
                f"got {args.dataset!r}"
            )
        dataset = datasets.load_dataset(
            args.dataset, args.split, root=args.data_root, **args.dataset_kwargs
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise _CommandError(
            f"--dataset {args.dataset} gave {type(dataset).__name__}, not a dataset "
            "(len() and dataset[i] -> (input, label))"
        )
    return dataset


def _device(args: argparse.Namespace) -> torch.device:
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise _CommandError(f"--device: not a device: {args.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise _CommandError(f"--device {args.device}: CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# ---------------------------------------------------------------------------- commands
def _certify(args: argparse.Namespace) -> int:
    from rsmooth.metrics import format_table
    from rsmooth.runner import certify_dataset
    from rsmooth.shards import Shard, distributed_group
    from rsmooth.smoothing import SmoothedClassifier

    if args.stop < -1 or args.stop == 0:
        raise _CommandError(
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
            raise _CommandError("--max-n applies to the sequential mode only; give --radii too")
        return Certify(n=100_000 if args.n is None else args.n, n0=args.n0, alpha=args.alpha)
    if args.n is not None:
        raise _CommandError(
            "--n is CERTIFY's fixed sample size; with --radii the sequential procedure stops "
            "each input as soon as its radii are decided: give the most samples per input with "
            "--max-n instead"
        )
    max_n = 100_000 if args.max_n is None else args.max_n
    return RadiusGrid(tuple(args.radii), alpha=args.alpha, max_n=max_n, n0=args.n0)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signum)


def _report(args: argparse.Namespace) -> int:
    from rsmooth.metrics import format_table, read_results

    if args.labels is not None and len(args.labels) != len(args.files):
        raise _CommandError(
            f"--labels must give one name per file ({len(args.files)}), got {len(args.labels)}"
        )
    if args.radii is not None:
        bad = [r for r in args.radii if not (r >= 0 and r != float("inf"))]
        if bad:
            raise _CommandError(f"--radii must be non-negative finite numbers, got {bad[0]}")
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.is_file():
            raise _CommandError(f"no such file: {path}")
    if args.labels is not None:
        names = list(args.labels)
    else:
        names = [p.name[: -len(".tsv")] if p.name.endswith(".tsv") else p.name for p in paths]
        if len(set(names)) < len(names):
            names = [str(p) for p in paths]
    if len(set(names)) < len(names):
        raise _CommandError(f"--labels must be distinct, got {names}")
    results = {name: read_results(path) for name, path in zip(names, paths, strict=True)}
    for result in results.values():
        if len(result) == 0:
            raise _CommandError(f"{result.path}: no rows")
    grids = any(result.kind == "grid" for result in results.values())
    if grids and args.plot is not None:
        raise _CommandError(
            "--plot draws certified accuracy at every radius, but a grid file (rsmooth certify "
            "--radii) is certified only at its grid radii; run CERTIFY (without --radii) for "
            "radius curves"
        )
    print(format_table(results, args.radii, fmt=args.format))
    if args.plot is not None:
        from rsmooth.plotting import plot_certified_accuracy, save_figure

        ax = plot_certified_accuracy(results, max_radius=args.max_radius)
        save_figure(ax, args.plot)
        print(f"rsmooth report: wrote {args.plot}", file=sys.stderr)
    _show_settings(results)  # after the outputs: an error stays one message
    if grids:
        print(
            "rsmooth report: no ACR for grid files (rsmooth certify --radii): each input "
            "stopped as soon as every grid radius was decided, so its radius is only a lower "
            "bound, not comparable with CERTIFY's",
            file=sys.stderr,
        )
    return 0


def _show_settings(results: dict[str, Any]) -> None:
    """Print each run's settings on stderr, and warn when runs are not comparable."""
    known = {}
    for name, result in results.items():
        settings = result.settings
        if settings is None:
            text = "no settings file (sigma, n and alpha unknown)"
        elif settings.kind == "grid":
            text = (
                f"grid {list(settings.radii)}, sigma {settings.sigma:g}, max_n "
                f"{settings.max_n:d}, alpha {settings.alpha:g}"
            )
            known[name] = {"sigma": settings.sigma, "alpha": settings.alpha}
        else:
            text = (
                f"sigma {settings.sigma:g}, n {settings.n:d}, alpha {settings.alpha:g}, "
                f"radius cap {settings.radius_cap:.3f}"
            )
            known[name] = {"sigma": settings.sigma, "n": settings.n, "alpha": settings.alpha}
        print(f"rsmooth report: {name}: {text}", file=sys.stderr)
    for key in ("sigma", "n", "alpha"):
        values = {name: entry[key] for name, entry in known.items() if key in entry}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{name}: {value:g}" for name, value in values.items())
            print(
                f"rsmooth report: warning: the runs differ in {key} ({listed}), so their ACRs "
                "and certified accuracies are not comparable (n and alpha set the radius cap "
                "and the bound; sigma sets the scale)",
                file=sys.stderr,
            )


def _plan(args: argparse.Namespace) -> int:
    import numpy as np

    from rsmooth._validation import check_radii
    from rsmooth.stats import radius_to_probability

    radii = check_radii(args.radii)
    alpha = args.alpha
    beta = alpha if args.beta is None else args.beta
    for name, value in (("--alpha", alpha), ("--beta", beta)):
        if not 0 < value < 1:
            raise _CommandError(f"{name} must be in (0, 1), got {value}")
    if args.n0 < 0:
        raise _CommandError(f"--n0 must be >= 0, got {args.n0}")
    certify_n = args.max_n if args.n is None else args.n
    if certify_n < 1:
        raise _CommandError(f"--n must be a positive integer, got {certify_n}")
    targets = radius_to_probability(np.asarray(radii), args.sigma)
    if args.source is not None:
        if args.p is not None:
            raise _CommandError("give either --p or --from, not both")
        return _plan_from(args, radii, alpha, beta, certify_n)
    p_values = np.asarray(
        sorted(set(args.p or [0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, *targets.tolist()]))
    )
    bad = [p for p in p_values if not 0 <= p <= 1]
    if bad:
        raise _CommandError(f"--p must be probabilities in [0, 1], got {bad[0]}")
    cost = _expected_cost(args, p_values, radii, alpha, beta, certify_n)
    _print_schedule(cost["looks"], alpha, beta, radii, targets)
    total = args.n0 + certify_n
    header = ["p_A", "E[samples]", "saving"]
    header += [f"P(r={r:g})" for r in radii] + [f"CERTIFY P(r={r:g})" for r in radii]
    rows = []
    for i, p in enumerate(p_values.tolist()):
        expected = float(cost["samples"][i])
        rows.append(
            [f"{p:.6g}", f"{expected:,.0f}", f"{total / (args.n0 + expected):.1f}x"]
            + [f"{v:.4f}" for v in cost["certify_sequential"][i]]
            + [f"{v:.4f}" for v in cost["certify_certify"][i]]
        )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print("\n".join("| " + " | ".join(row) + " |" for row in rows))
    print(
        f"\nE[samples] excludes the n0={args.n0} selection samples; saving = (n0 + n) / "
        f"(n0 + E[samples]) against CERTIFY with n={certify_n}; P(r=...) is the probability "
        "of certifying each radius"
    )
    return 0


def _print_schedule(
    looks: Any, alpha: float, beta: float, radii: Sequence[float], targets: Any
) -> None:
    shown = ", ".join(f"{int(v):,}" for v in looks)
    print(f"schedule: {len(looks)} looks at {shown}")
    print(
        f"each look tests at alpha/K = {alpha / len(looks):.3g} (certify) and beta/K = "
        f"{beta / len(looks):.3g} (rule out); radii {list(radii)} need p_A >= "
        + ", ".join(f"{t:.4f}" for t in targets)
        + "\n"
    )


def _plan_from(
    args: argparse.Namespace, radii: Sequence[float], alpha: float, beta: float, certify_n: int
) -> int:
    import numpy as np

    from rsmooth.metrics import certified_accuracy, read_results
    from rsmooth.sequential import plug_in_probabilities
    from rsmooth.stats import radius_to_probability

    path = Path(args.source)
    if not path.is_file():
        raise _CommandError(f"--from: no such file: {path}")
    results = read_results(path)
    if results.kind == "grid":
        raise _CommandError(
            f"--from {path}: a grid results file (rsmooth certify --radii); its counts stopped "
            "early and cannot predict anything: give a CERTIFY results file"
        )
    if results.count is None or results.n is None or len(results) == 0:
        raise _CommandError(
            f"--from {path}: needs the count and n columns (files written by rsmooth certify)"
        )
    p_values, correct = plug_in_probabilities(
        results.count.numpy(), results.n.numpy(), results.label.numpy(),
        results.prediction.numpy(),
    )  # fmt: skip
    cost = _expected_cost(args, p_values, radii, alpha, beta, certify_n)
    targets = radius_to_probability(np.asarray(radii), args.sigma)
    _print_schedule(cost["looks"], alpha, beta, radii, targets)
    samples = cost["samples"] + args.n0
    total = args.n0 + certify_n
    measured = certified_accuracy(results, None, radii)
    print(
        f"{len(results)} inputs of {path.name}: expected samples per input {samples.mean():,.0f} "
        f"(median {np.median(samples):,.0f}, 95th percentile {np.percentile(samples, 95):,.0f}) "
        f"against CERTIFY's {total:,}: {total / samples.mean():.1f}x fewer\n"
    )
    header = ["radius", "sequential (expected)", f"CERTIFY n={certify_n} (expected)", "in file"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for j, r in enumerate(radii):
        print(
            f"| {r:g} | {100 * (correct * cost['certify_sequential'][:, j]).mean():.2f} | "
            f"{100 * (correct * cost['certify_certify'][:, j]).mean():.2f} | "
            f"{100 * float(measured[j]):.2f} |"
        )
    print(
        "\ncertified accuracy (%); p_A per input is the plug-in (count + 1/2) / (n + 1) of the "
        "class CERTIFY selected (the sequential certifier selects the same class), counted "
        "where that class is the label"
    )
    return 0


def _expected_cost(
    args: argparse.Namespace,
    p_values: Any,
    radii: Sequence[float],
    alpha: float,
    beta: float,
    certify_n: int,
) -> dict[str, Any]:
    from rsmooth.sequential import RadiusGrid, expected_cost

    grid = RadiusGrid(
        tuple(radii), alpha=alpha, max_n=args.max_n, n0=max(args.n0, 1), beta=beta,
        growth=args.growth,
    )  # fmt: skip
    return expected_cost(p_values, grid, args.sigma, certify_n)


def _merge(args: argparse.Namespace) -> int:
    from rsmooth.shards import merge_results

    parts = args.parts or None
    results = merge_results(args.out, parts)
    print(f"rsmooth merge: {len(results)} rows into {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rsmooth`` command line; returns the exit status.

    Args:
        argv: Arguments without the program name. Default: ``sys.argv[1:]``.

    Returns:
        0 on success, 2 for a usage or input error (one message on stderr), 128 + the signal
        number when ``certify`` was stopped by ``SIGTERM`` or ``SIGINT`` (finished rows are
        kept; rerun to resume).

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        rsmooth ...
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    prog = f"rsmooth {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = functools.partial(_show_warning, prog)
        return _run_command(args, prog)


def _show_warning(
    prog: str,
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Print a warning as the command's own message, not as a line of rsmooth's source."""
    text = _ANSI.sub("", str(message)).strip()
    print(f"{prog}: warning: {text} ({category.__name__})", file=sys.stderr)


def _run_command(args: argparse.Namespace, prog: str) -> int:
    try:
        return int(args.handler(args))
    except _Terminated as stop:
        print(
            f"{prog}: stopped by signal {stop.signum} after writing the finished rows; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted after writing the finished rows; rerun the same command to resume",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT
    except (
        _CommandError,
        ValueError,
        TypeError,
        OSError,
        ImportError,
        RuntimeError,
        AssertionError,
    ) as error:
        if os.environ.get("RSMOOTH_DEBUG") == "1":
            raise
        text = _ANSI.sub("", str(error)).strip() or type(error).__name__
        if isinstance(error, AssertionError):
            if "Guard failed" not in text:
                raise  # a bug, not a user error: keep the traceback
            text = (
                f"the --model program refused the input shape ({text}); if it is a "
                f"torch.export file with a fixed batch size, {_EXPORT_HINT}"
            )
        if isinstance(error, FileNotFoundError) and error.filename and "\n" not in text:
            text = f"no such file: {error.filename}" if "No such file" in text else text
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 2
