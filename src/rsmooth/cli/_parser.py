"""The ``rsmooth`` argument parser: argparse only, so that ``rsmooth --help`` imports nothing heavy."""

from __future__ import annotations

import argparse
import json
from typing import Any, NoReturn

__all__ = ["build_parser"]

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

On Linux with glibc the command keeps freed memory for the next forward pass
(rsmooth.allocator.keep_freed_memory: no page faults for the activations of every
batch; resident memory stays near its peak; the Performance page has the numbers).
Set MALLOC_TRIM_THRESHOLD_ or preload another allocator to keep your own choice.
"""

_EPILOG_MAIN = """\
Errors print one message and exit with status 2. Set RSMOOTH_DEBUG=1 to get the
full Python traceback instead (e.g. RSMOOTH_DEBUG=1 rsmooth certify ...).
"""


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
    certify.set_defaults(handler="certify")

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
    report.set_defaults(handler="report")

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
    plan.set_defaults(handler="plan")

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
    merge.set_defaults(handler="merge")
    return parser


def _version() -> str:
    from rsmooth import __version__

    return __version__
