"""Certify a whole dataset into a resumable results file, sharded across processes.

:func:`certify_dataset` runs CERTIFY :cite:`cohen2019certified` over a dataset and writes one
tab-separated row per input as soon as it is certified, in the format every randomized-smoothing
codebase reads (:data:`COLUMNS`: ``idx label predict radius correct time count n``). The
certification settings are recorded next to the file, in ``<out>.json``, so that the TSV stays
readable by the reference ``analyze.py`` scripts and by :func:`rsmooth.metrics.read_results`.

Properties the runner guarantees:

- **Deterministic per input.** Input ``i``'s noise depends only on ``(seed, i)`` (and on ``n``,
  ``n0`` and the device type), never on which other inputs were certified with it, nor on the
  smoothed classifier's ``batch_size``. A result is the same whether the dataset was certified in one
  process or many, in one run or resumed.
- **Resumable.** Rerunning with the same ``out`` skips the rows already written, truncates a
  half-written last line (from a killed process) and appends the rest. A file written with
  other settings is refused with an error rather than mixed.
- **Interruptible.** ``SIGTERM`` and ``SIGINT`` let the current call finish, its rows are written,
  then the signal's previous handler runs (a second signal acts at once).
- **Sharded.** Under ``torchrun`` (``RANK``/``WORLD_SIZE``), an initialised
  ``torch.distributed`` process group, or a SLURM job array, each process certifies every
  ``count``-th input into its own part file ``<out>.part-00000-of-00002``; the parts are merged
  into ``out`` at the end (:func:`merge_results`, also ``rsmooth merge``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

import torch

from rsmooth._seeding import splitmix64 as _splitmix64
from rsmooth._validation import (
    check_input_range,
    check_inputs,
    check_int,
    check_open_unit,
    check_real,
)
from rsmooth.metrics import CertificationResults, read_results
from rsmooth.smoothing import (
    Certificate,
    SampleSizeWarning,
    SmoothedClassifier,
    _auto_key,
    _warn_sample_size,
)

__all__ = [
    "COLUMNS",
    "Shard",
    "certify_dataset",
    "detect_shard",
    "input_seed",
    "merge_results",
    "part_path",
    "write_results",
]

logger = logging.getLogger(__name__)

#: Columns of a results file written by :func:`certify_dataset`, in order. The first six are the
#: reference format (``certify.py`` of :cite:`cohen2019certified`); ``count`` (votes for the
#: predicted class among the ``n`` estimation samples) and ``n`` allow re-analysis at another
#: ``alpha``.
COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time", "count", "n")

_HEADER = "\t".join(COLUMNS) + "\n"
_FORMAT_VERSION = 1
#: Settings that change the results; a resume or merge must match them. The batch size is
#: recorded too (it does not change the results).
_CONFIG_KEYS = ("sigma", "n", "n0", "alpha", "seed")
#: Settings of a sequential (``radii=``) run, recorded with ``"mode": "sequential"``.
_SEQUENTIAL_KEYS = ("mode", "radii", "max_n", "beta", "growth", "looks")
_PART_RE = re.compile(r"\.part-(\d{5,})-of-(\d{5,})$")
_MASK64 = (1 << 64) - 1


class _Dataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


# ---------------------------------------------------------------------------- seeds and shards
def input_seed(seed: int, index: int) -> int:
    """The seed of input ``index``'s noise generator in a run seeded with ``seed``.

    A fixed, hash-free mix (two SplitMix64 rounds) of both numbers into 63 bits: it is the same in
    every process, Python version and platform, and neighbouring indices get unrelated streams.

    Args:
        seed: The run's seed (``>= 0``).
        index: The input's index in the dataset (``>= 0``).

    Returns:
        An integer in ``[0, 2**63)`` for ``torch.Generator.manual_seed``.

    Example:
        >>> input_seed(0, 0) == input_seed(0, 0), input_seed(0, 0) == input_seed(0, 1)
        (True, False)
    """
    seed = check_int("seed", seed, min=0)
    index = check_int("index", index, min=0)
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) >> 1


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: every ``count``-th input, starting at ``index``.

    Attributes:
        index: This process's shard, ``0 <= index < count``.
        count: Number of shards.
        source: Where it came from: ``"argument"``, ``"torch.distributed"``, ``"env"``
            (``RANK``/``WORLD_SIZE``), ``"slurm-array"`` or ``"single"``.
    """

    index: int = 0
    count: int = 1
    source: str = "single"

    def __post_init__(self) -> None:
        check_int("shard count", self.count)
        check_int("shard index", self.index, min=0)
        if self.index >= self.count:
            raise ValueError(
                f"shard index must be smaller than the shard count {self.count}, got {self.index}"
            )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def detect_shard() -> Shard:
    """Find this process's shard from the launcher.

    In order: an initialised ``torch.distributed`` process group (rank, world size); the
    ``RANK``/``WORLD_SIZE`` variables set by ``torchrun`` and most launchers; a SLURM job array
    (``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``); else a single
    shard. A launcher shard combines with a SLURM array: ``torchrun`` inside each array task
    splits that task's share further.

    Returns:
        The :class:`Shard`.

    Example:
        >>> detect_shard().count >= 1
        True
    """
    index, count, source = 0, 1, "single"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        index, count = torch.distributed.get_rank(), torch.distributed.get_world_size()
        source = "torch.distributed"
    else:
        rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
        if rank is not None and world is not None and world > 1:
            index, count, source = rank, world, "env"
    task, tasks = _env_int("SLURM_ARRAY_TASK_ID"), _env_int("SLURM_ARRAY_TASK_COUNT")
    if task is not None and tasks is not None and tasks > 1:
        task -= _env_int("SLURM_ARRAY_TASK_MIN") or 0
        index, count = task * count + index, tasks * count
        source = "slurm-array" if source == "single" else f"slurm-array+{source}"
    return Shard(index, count, source)


def part_path(out: str | os.PathLike[str], shard: Shard) -> Path:
    """The part file a shard writes: ``<out>.part-00001-of-00004``, or ``out`` for one shard.

    Example:
        >>> part_path("results.tsv", Shard(1, 4)).name
        'results.tsv.part-00001-of-00004'
    """
    out = Path(out)
    if shard.count == 1:
        return out
    return out.with_name(f"{out.name}.part-{shard.index:05d}-of-{shard.count:05d}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# ---------------------------------------------------------------------------- file handling
def _radius_text(radius: float) -> str:
    """``radius`` to 3 significant digits, as the research code writes it, but rounded *down*.

    Rounding to nearest could write 0.4996 as ``0.5`` and so count the input as certified at
    r = 0.5 when the file is read back; rounding down never claims more than was certified.

    Example:
        >>> _radius_text(0.4996), _radius_text(1.23456), _radius_text(0.0), _radius_text(2.0)
        ('0.499', '1.23', '0.0', '2.0')
    """
    if radius <= 0.0 or not math.isfinite(radius):
        return f"{radius:.3}"
    exact = Decimal(repr(radius))  # the shortest text that reads back as the same float
    down = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 2), rounding=ROUND_FLOOR)
    return f"{float(down):.3}"


def _format_row(
    idx: int, label: int, predict: int, radius: float, seconds: float, count: int, n: int
) -> str:
    correct = int(predict == label)
    return (
        f"{idx}\t{label}\t{predict}\t{_radius_text(radius)}\t{correct}"
        f"\t{timedelta(seconds=seconds)}\t{count}\t{n}\n"
    )


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    side = _sidecar(path)
    if not side.exists():
        return None
    try:
        data = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{side}: not a valid rsmooth settings file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{side}: not a valid rsmooth settings file (no 'config' object)")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _selection_record(selection: Sequence[int]) -> dict[str, Any]:
    if len(selection) >= 2:
        step = selection[1] - selection[0]
        if step > 0 and all(b - a == step for a, b in itertools.pairwise(selection)):
            return {"start": selection[0], "stop": selection[-1] + 1, "step": step}
    return {"indices": list(selection)}


def _selection_from_record(record: Any) -> list[int] | None:
    if not isinstance(record, dict):
        return None
    if "indices" in record:
        return [int(i) for i in record["indices"]]
    return list(range(int(record["start"]), int(record["stop"]), int(record["step"])))


def _config_mismatch(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [*_CONFIG_KEYS, *(k for k in _SEQUENTIAL_KEYS if k in old or k in new)]
    return [
        f"{key}={old.get(key)!r} in the file, {new.get(key)!r} now"
        for key in keys
        if old.get(key) != new.get(key)
    ]


def _state_dict_hash(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values), on any device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _identity_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    def show(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 80 else text[:77] + "..."

    return [
        f"{key}: {show(old.get(key))} in the file, {show(new.get(key))} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _scan_rows(path: Path, data: bytes) -> list[int]:
    """Indices of the complete rows of a results file's contents (header already checked)."""
    text = data.decode("utf-8", errors="replace")
    indices = []
    for line_number, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            raise ValueError(
                f"{path}, line {line_number}: expected {len(COLUMNS)} tab-separated fields, "
                f"got {len(fields)}; the file is damaged"
            )
        try:
            indices.append(int(fields[0]))
        except ValueError:
            raise ValueError(
                f"{path}, line {line_number}: column 'idx' must be int, got {fields[0]!r}"
            ) from None
    return indices


def _open_for_append(
    path: Path,
    config: dict[str, Any],
    selection: Sequence[int],
    shard: Shard,
    identity: dict[str, Any] | None = None,
    force: bool = False,
) -> tuple[TextIO, set[int]]:
    """Open (or create) a results file for appending; return it and the indices already done."""
    done: list[int] = []
    header = _HEADER.encode()
    fresh = True
    if path.exists():
        data = path.read_bytes()
        if len(data) >= len(header) or not header.startswith(data):
            fresh = False
            if not data.startswith(header):
                first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
                raise ValueError(
                    f"{path} exists with a different header ({first!r}, expected "
                    f"{_HEADER.strip()!r}); choose another out or delete the file"
                )
            end = data.rfind(b"\n") + 1
            if end < len(data):
                logger.info("%s: truncating a half-written last line", path)
                with open(path, "r+b") as damaged:
                    damaged.truncate(end)
                data = data[:end]
            done = _scan_rows(path, data)
            duplicates = sorted(i for i, times in Counter(done).items() if times > 1)
            if duplicates:
                raise ValueError(f"{path}: idx {duplicates[:5]} appear more than once")
            recorded = _read_sidecar(path)
            if recorded is None and done:
                raise ValueError(
                    f"{path} has {len(done)} rows but no settings file {_sidecar(path).name}, so "
                    "it cannot be resumed safely; choose another out or delete the file"
                )
            if recorded is not None:
                mismatch = _config_mismatch(recorded["config"], config)
                if mismatch:
                    raise ValueError(
                        f"{path} was written with other settings ({'; '.join(mismatch)}); "
                        "choose another out, or rerun with the file's settings to resume"
                    )
                differ = _identity_mismatch(recorded.get("identity") or {}, identity or {})
                if differ and "identity" in recorded and done:
                    if not force:
                        raise ValueError(
                            f"{path} holds {len(done)} rows of another run (model or data "
                            f"differ: {'; '.join(differ)}); choose another out, or pass "
                            "force=True (--force) to append to it anyway"
                        )
                    logger.warning("%s: resuming another run (forced): %s", path, "; ".join(differ))
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(
        _sidecar(path),
        {
            "format": _FORMAT_VERSION,
            "columns": list(COLUMNS),
            "config": config,
            "identity": identity,
            "selection": _selection_record(selection),
            "shard": None if shard.count == 1 else [shard.index, shard.count],
            "complete": False,
        },
    )
    handle: TextIO
    if fresh:
        handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        handle.write(_HEADER)
        handle.flush()
    else:
        handle = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
    return handle, set(done)


def _mark_complete(path: Path, settled: Mapping[str, Any] | None = None) -> None:
    """Mark a part complete in its sidecar, recording the automatic choices the run settled on."""
    data = _read_sidecar(path)
    if data is not None:
        data["complete"] = True
        if settled and isinstance(data.get("config"), dict):
            data["config"].update(settled)
        _write_json(_sidecar(path), data)


# ---------------------------------------------------------------------------- signals, progress
class _SignalGuard:
    """Defer SIGTERM/SIGINT to the next row boundary; re-deliver to the previous handler after."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: stop at once
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        logger.info("signal %d received: finishing the current rows", signum)

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN or previous is None:
                    continue  # ignored (e.g. nohup) or installed from C: leave alone
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def redeliver(self) -> None:
        """Run the previous handler for the signal received (if any), now that rows are safe."""
        if self.received is not None:
            signal.raise_signal(self.received)


class _Progress:
    """Rows done, samples/s and time left: tqdm when installed, else a plain stderr line."""

    def __init__(self, total: int, done: int, enabled: bool, desc: str) -> None:
        self.total, self.done, self.enabled, self.desc = total, done, enabled, desc
        self.rows = 0
        self.samples = 0
        self.start = time.perf_counter()
        self.last = 0.0
        self.bar: Any = None
        self.stream = sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total,
                    initial=done,
                    desc=desc,
                    unit="row",
                    file=self.stream,
                    dynamic_ncols=True,
                )

    def update(self, rows: int, samples: int) -> None:
        self.rows += rows
        self.samples += samples
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.samples / elapsed
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)
            self.bar.update(rows)
            return
        now = time.perf_counter()
        if now - self.last < (1.0 if self.tty else 10.0) and self.done + self.rows < self.total:
            return
        self.last = now
        left = self.total - self.done - self.rows
        eta = timedelta(seconds=round(left * elapsed / self.rows))
        line = (
            f"{self.desc}: {self.done + self.rows}/{self.total} rows, {rate:,.0f} samples/s, "
            f"{eta} left"
        )
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty and self.rows:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------- the runner
def _select(length: int, indices: Iterable[int] | None, skip: int, stop: int | None) -> list[int]:
    if indices is not None:
        if skip != 1 or stop is not None:
            raise ValueError("pass either indices or skip/stop, not both")
        chosen = [check_int("indices", i, min=0) for i in indices]
        bad = [i for i in chosen if i >= length]
        if bad:
            raise ValueError(
                f"indices must be smaller than the dataset's length {length}, got {bad[0]}"
            )
        if len(set(chosen)) != len(chosen):
            raise ValueError("indices must not repeat an index")
        return chosen
    skip = check_int("skip", skip)
    end = length if stop is None else min(length, check_int("stop", stop, min=0))
    return list(range(0, end, skip))


def _default_device(smoothed: SmoothedClassifier) -> torch.device:
    for tensor in (*smoothed.model.parameters(), *smoothed.model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _label(value: Any, index: int) -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point():
            raise ValueError(
                f"dataset[{index}] must give an integer class label, got a tensor of "
                f"dtype {value.dtype} and shape {tuple(value.shape)}"
            )
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover
            pass
        raise TypeError(
            f"dataset[{index}] must give an integer class label, got {type(value).__name__}"
        )
    return value


def certify_dataset(
    smoothed: SmoothedClassifier,
    dataset: _Dataset,
    out: str | os.PathLike[str],
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    seed: int = 0,
    skip: int = 1,
    stop: int | None = None,
    indices: Iterable[int] | None = None,
    inputs_per_call: int | None = None,
    device: torch.device | str | None = None,
    shard: Shard | tuple[int, int] | None = None,
    merge: bool = True,
    progress: bool = True,
    radii: Sequence[float] | None = None,
    max_n: int | None = None,
    beta: float | None = None,
    growth: float = 1.5,
    identity: Mapping[str, Any] | None = None,
    force: bool = False,
) -> CertificationResults:
    r"""Certify a dataset with CERTIFY, one resumable results row per input.

    Selects the inputs ``i`` with ``i % skip == 0`` and ``i < stop`` (the reference
    ``certify.py``'s ``--skip`` and ``--max``), or the given ``indices``; certifies them in
    calls of ``inputs_per_call`` inputs, seeding input ``i``'s noise generator with
    :func:`input_seed` ``(seed, i)``; and appends a row per input to ``out`` (columns
    :data:`COLUMNS`, flushed per row). The settings that change the results (``sigma``, ``n``,
    ``n0``, ``alpha`` and ``seed``) are recorded in ``<out>.json``, with the smoothed
    classifier's ``batch_size``, which does not change them (a run may resume with another).

    **Resuming.** If ``out`` exists, its rows are kept and only missing inputs are certified; a
    half-written last line is truncated first. The settings must match the recorded ones
    (``ValueError`` otherwise), and so must the run's identity (the model's weights and
    ``identity``) unless ``force=True``. The selection may change between runs (e.g. a larger ``stop``);
    rows outside the new selection stay in the file.

    **Interrupting.** ``SIGTERM`` or ``SIGINT`` (Ctrl-C) stop the run after the current call's
    rows are written; then the previous handler gets the signal (``KeyboardInterrupt`` for
    ``SIGINT`` by default, process exit for ``SIGTERM``). A second signal acts at once; a killed
    run leaves at most a half line, repaired by the next run. A signal the process ignores stays
    ignored: a run started in the background (``nohup``, or ``cmd &`` from a script) inherits
    ``SIGINT`` as ignored, so Ctrl-C or ``kill -INT`` does not stop it and it goes on to the end;
    stop such a run with ``SIGTERM`` (``kill PID``). The same holds for a handler installed
    from C (``signal.getsignal`` returns ``None``), which is left alone.

    **Sharding.** With several shards (``shard=``, or :func:`detect_shard` under ``torchrun`` or
    a SLURM array), this process certifies ``selection[index::count]`` into
    :func:`part_path` ``(out, shard)``. With ``merge=True`` the parts are merged into ``out``
    when all are done: after a barrier on rank 0 when a ``torch.distributed`` process group is
    initialised, otherwise by whichever shard finishes last (the others return their own part).

    Args:
        smoothed: The :class:`~rsmooth.SmoothedClassifier` to certify.
        dataset: Indexable with ``len()``, ``dataset[i] = (input, label)``; inputs are tensors
            of one shape (no batch dimension), labels integers (e.g. a ``TensorDataset``).
        out: The results file (tab-separated).
        n0: Selection samples per input. Default: 100.
        n: Estimation samples per input. Default: 100,000.
        alpha: Failure probability of each certificate. Default: 0.001.
        seed: Seed of the run (``>= 0``). Default: 0.
        skip: Certify every ``skip``-th input. Default: 1.
        stop: Certify only inputs with index ``< stop``. Default: all.
        indices: Explicit dataset indices instead of ``skip``/``stop``.
        inputs_per_call: Inputs certified per engine call. Default:
            ``max(1, batch_size // n)`` (with ``batch_size="auto"``, the size known when the
            run starts: the automatic choice, or the device's default before it has settled),
            which fills the forward batches when ``n``
            is small and keeps one input per call (fine-grained progress and resumption)
            when it is large. It does not change the results.
        device: Device for the inputs and the noise. Default: the model's.
        shard: ``Shard`` or ``(index, count)``. Default: :func:`detect_shard`.
        merge: Merge the part files into ``out`` at the end when sharded. Default: True.
        progress: Show rows done, samples/s and time left on stderr (tqdm when installed, the
            ``progress`` extra). Default: True.
        radii: Sequential mode: certify at this sorted grid of radii with
            :meth:`~rsmooth.SmoothedClassifier.certify_radius` instead of CERTIFY. Each row's
            ``radius`` is then the sequential certified radius (at least every certified grid
            radius, below every other one), ``count`` the candidate's votes and ``n`` the
            estimation samples actually drawn; ``n`` (the argument) is not used. Read such a
            file at the grid radii only (``rsmooth report`` does): its ACR is not comparable
            with CERTIFY's, and its counts cannot be re-analysed at another alpha.
            Default: None (CERTIFY).
        max_n: Sequential mode: the largest number of estimation samples per input.
            Default: 100,000.
        beta: Sequential mode: failure probability of the "ruled out" decisions. Default:
            ``alpha``.
        growth: Sequential mode: ratio of consecutive looks. Default: 1.5.
        identity: What identifies the run besides the settings, recorded in ``<out>.json``
            (JSON values, e.g. ``{"model": ..., "dataset": ..., "split": ...}``; the command
            line records the model spec, the checkpoint's SHA-256, the dataset, split and
            options). A SHA-256 of the model's state dict is always added as ``model_hash``.
            Resuming a file whose recorded identity differs is refused with an error naming
            the difference, so that two models' rows are never mixed in one file.
        force: Resume even when the recorded identity differs (a warning is logged).
            Default: False.

    Returns:
        The :class:`~rsmooth.metrics.CertificationResults` of the whole of ``out`` (of this
        shard's part file when the parts were not merged by this process).

    Raises:
        TypeError: An argument has the wrong type, or the dataset gives non-integer labels.
        ValueError: An argument is out of range, or ``out`` exists with another header or
            other settings, or is damaged, or merging found gaps or duplicates.

    Warns:
        SampleSizeWarning: ``n`` is too small for any input ever to be certified at ``alpha``.

    Example:
        >>> import tempfile, pathlib
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.rand(6, 2, generator=g), torch.tensor([0, 1, 0, 1, 0, 1]))
        >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.25)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "results.tsv"
        >>> res = certify_dataset(smoothed, data, out, n0=20, n=200, progress=False)
        >>> len(res), out.read_text().splitlines()[0].split("\t")
        (6, ['idx', 'label', 'predict', 'radius', 'correct', 'time', 'count', 'n'])
    """
    if not isinstance(smoothed, SmoothedClassifier):
        raise TypeError(f"smoothed must be a SmoothedClassifier, got {type(smoothed).__name__}")
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            "dataset must support len() and dataset[i] -> (input, label), got "
            f"{type(dataset).__name__}"
        )
    n0 = check_int("n0", n0)
    n = check_int("n", n)
    alpha = check_open_unit("alpha", alpha)
    seed = check_int("seed", seed, min=0)
    sequential = _sequential_config(smoothed, radii, max_n, alpha, beta, growth)
    if inputs_per_call is not None:
        inputs_per_call = check_int("inputs_per_call", inputs_per_call)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path, got {type(out).__name__}")
    if shard is None:
        shard = detect_shard()
    elif not isinstance(shard, Shard):
        if not (isinstance(shard, tuple) and len(shard) == 2):
            raise TypeError(f"shard must be a Shard or an (index, count) tuple, got {shard!r}")
        shard = Shard(shard[0], shard[1], "argument")
    device = _default_device(smoothed) if device is None else torch.device(device)
    selection = _select(len(dataset), indices, skip, stop)
    if sequential is None:
        _warn_sample_size("certify", n, alpha, stacklevel=2)

    mine = selection[shard.index :: shard.count]
    if identity is not None and not isinstance(identity, Mapping):
        raise TypeError(f"identity must be a mapping or None, got {type(identity).__name__}")
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool, got {type(force).__name__}")
    try:
        run_identity = json.loads(
            json.dumps({**dict(identity or {}), "model_hash": _state_dict_hash(smoothed.model)})
        )
    except TypeError as error:
        raise TypeError(f"identity must hold JSON values ({error})") from None
    first = torch.as_tensor(dataset[mine[0]][0]) if mine else None
    if first is not None and first.is_floating_point() and bool(torch.isfinite(first).all()):
        check_input_range(  # fail on a wrong input range before any file is written
            f"dataset[{mine[0]}] input",
            first,
            smoothed.input_range,
            switch="input_range=None to SmoothedClassifier (--input-range none in the CLI)",
        )
    batch_size = _batch_size_for_run(smoothed, dataset, mine, device)
    if inputs_per_call is None:
        # sequential: many inputs per call keep the forward batches of the small looks full
        inputs_per_call = max(1, batch_size // (n if sequential is None else 10))

    out = Path(out)
    path = part_path(out, shard)
    config: dict[str, Any] = {
        "sigma": smoothed.sigma,
        "n": n,
        "n0": n0,
        "alpha": alpha,
        "seed": seed,
        "batch_size": batch_size,
    }
    if smoothed.batch_size == "auto":
        config["batch_size_auto"] = True
    config["memory_format"] = smoothed.memory_format
    config["fold_batchnorm"] = smoothed.fold_batchnorm
    if sequential is not None:
        config.update(sequential)
        config["n"] = None
    handle, done = _open_for_append(path, config, selection, shard, run_identity, force)
    todo = [i for i in mine if i not in done]
    show = progress and os.environ.get("LOCAL_RANK", "0") == "0"
    desc = "certify" if shard.count == 1 else f"certify {shard.index}/{shard.count}"
    bar = _Progress(len(mine), len(mine) - len(todo), show, desc)
    guard = _SignalGuard()
    try:
        with guard:
            for start in range(0, len(todo), inputs_per_call):
                if guard.received is not None:
                    break
                chunk = todo[start : start + inputs_per_call]
                items = [dataset[i] for i in chunk]
                labels = [_label(item[1], i) for item, i in zip(items, chunk, strict=True)]
                inputs = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
                check_inputs("dataset inputs", inputs)
                generators = [
                    torch.Generator(device=device).manual_seed(input_seed(seed, i)) for i in chunk
                ]
                began = time.perf_counter()
                if sequential is not None:
                    _certify_sequential(
                        smoothed, inputs, generators, chunk, labels, config, n0, handle, bar
                    )
                    continue
                with warnings.catch_warnings():  # warned once above
                    warnings.simplefilter("ignore", SampleSizeWarning)
                    cert = smoothed.certify(inputs, n=n, n0=n0, alpha=alpha, generator=generators)
                predictions = cert.prediction.tolist()
                radii = cert.radius.tolist()
                counts = cert.count.tolist()
                seconds = (time.perf_counter() - began) / len(chunk)
                for i, label, p, r, c in zip(
                    chunk, labels, predictions, radii, counts, strict=True
                ):
                    handle.write(_format_row(i, label, p, r, seconds, c, n))
                    handle.flush()
                bar.update(len(chunk), (n + n0) * len(chunk))
    finally:
        handle.close()
        bar.close()
    if guard.received is not None:
        guard.redeliver()  # the previous handler decides (exit, KeyboardInterrupt, ...)
        return read_results(path)
    _mark_complete(path, _settled_choices(smoothed, dataset, mine, device))
    if shard.count == 1:
        return read_results(path)
    if not merge:
        return read_results(path)
    return _merge_after_run(out, path, shard)


def write_results(
    path: str | os.PathLike[str],
    certificate: Certificate,
    labels: Sequence[int] | torch.Tensor,
    *,
    times: float | Sequence[float] | torch.Tensor | None = None,
    indices: Sequence[int] | torch.Tensor | None = None,
) -> CertificationResults:
    r"""Write a :class:`~rsmooth.Certificate` to a standard results file, with its settings.

    The file has the columns :data:`COLUMNS` (``idx label predict radius correct time count n``),
    the format :func:`certify_dataset` writes and every randomized-smoothing codebase reads, and
    ``<path>.json`` records the certificate's ``sigma``, ``n``, ``n0`` and ``alpha`` (what
    ``rsmooth report`` shows). Use it for certificates from your own loop, without the dataset
    runner. An existing file is replaced.

    Args:
        path: The results file to write.
        certificate: The certificate of ``B`` inputs.
        labels: The true class of each input, ``B`` integers.
        times: Seconds spent per input: one number for every input (e.g. the call's time
            divided by ``B``), or ``B`` numbers. Default: 0.
        indices: The dataset index of each input (column ``idx``). Default: ``0..B-1``.

    Returns:
        The :class:`~rsmooth.metrics.CertificationResults` read back from ``path``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``labels``, ``times`` or ``indices`` do not have one entry per input, or
            hold negative values.

    Example:
        >>> import tempfile, pathlib
        >>> from torch import nn
        >>> g = torch.Generator().manual_seed(0)
        >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.25)
        >>> x, y = torch.rand(3, 2, generator=g), torch.tensor([0, 1, 0])
        >>> cert = smoothed.certify(x, n0=10, n=100, alpha=0.01, generator=g)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "mine.tsv"
        >>> res = write_results(out, cert, y, times=0.5)
        >>> len(res), res.n.tolist()
        (3, [100, 100, 100])
    """
    if not isinstance(certificate, Certificate):
        raise TypeError(f"certificate must be a Certificate, got {type(certificate).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path, got {type(path).__name__}")
    size = len(certificate)

    def column(name: str, value: Any, integer: bool) -> list[Any]:
        if isinstance(value, torch.Tensor):
            if integer and value.is_floating_point():
                raise TypeError(f"{name} must hold integers, got a tensor of dtype {value.dtype}")
            value = value.detach().cpu().reshape(-1).tolist()
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not integer:
            value = [float(value)] * size
        elif not isinstance(value, Sequence) or isinstance(value, str):
            raise TypeError(f"{name} must be a sequence or a tensor, got {type(value).__name__}")
        values = list(value)
        if len(values) != size:
            raise ValueError(
                f"{name} must have one entry per certified input ({size}), got {len(values)}"
            )
        return [check_int(name, v, min=0) if integer else _check_seconds(name, v) for v in values]

    label_list = column("labels", labels, True)
    time_list = column("times", 0.0 if times is None else times, False)
    index_list = column("indices", list(range(size)) if indices is None else indices, True)
    if len(set(index_list)) != size:
        raise ValueError("indices must not repeat an index")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = zip(
        index_list,
        label_list,
        certificate.prediction.tolist(),
        certificate.radius.tolist(),
        time_list,
        certificate.count.tolist(),
        strict=True,
    )
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(_HEADER)
        for idx, label, predict, radius, seconds, count in rows:
            handle.write(_format_row(idx, label, predict, radius, seconds, count, certificate.n))
    os.replace(tmp, out)
    config = {
        "sigma": certificate.sigma,
        "n": certificate.n,
        "n0": certificate.n0,
        "alpha": certificate.alpha,
        "seed": None,
        "batch_size": None,
    }
    _write_json(
        _sidecar(out),
        {
            "format": _FORMAT_VERSION,
            "columns": list(COLUMNS),
            "config": config,
            "identity": None,
            "selection": _selection_record(index_list),
            "shard": None,
            "complete": True,
        },
    )
    return read_results(out)


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must hold numbers of seconds, got {type(value).__name__}")
    if not (value >= 0 and value != float("inf")):
        raise ValueError(f"{name} must be non-negative finite seconds, got {value}")
    return float(value)


def _sequential_config(
    smoothed: SmoothedClassifier,
    radii: Sequence[float] | None,
    max_n: int | None,
    alpha: float,
    beta: float | None,
    growth: float,
) -> dict[str, Any] | None:
    """The sequential-mode settings recorded in the sidecar, or None in CERTIFY mode."""
    from rsmooth.sequential import _check_radii, _grid_schedule

    if radii is None:
        if max_n is not None or beta is not None:
            raise ValueError("max_n and beta apply to the sequential mode only; pass radii too")
        return None
    grid = _check_radii(radii)
    max_n = 100_000 if max_n is None else check_int("max_n", max_n)
    beta = alpha if beta is None else check_open_unit("beta", beta)
    growth = check_real("growth", growth)
    if not growth > 1:
        raise ValueError(f"growth must be greater than 1, got {growth}")
    looks, _, _ = _grid_schedule(grid, smoothed.sigma, alpha, beta, max_n, growth)
    return {
        "mode": "sequential",
        "radii": list(grid),
        "max_n": max_n,
        "beta": beta,
        "growth": growth,
        "looks": list(looks),
    }


def _certify_sequential(
    smoothed: SmoothedClassifier,
    inputs: torch.Tensor,
    generators: list[torch.Generator],
    chunk: list[int],
    labels: list[int],
    config: dict[str, Any],
    n0: int,
    handle: TextIO,
    bar: _Progress,
) -> None:
    """Certify one call's inputs with ``certify_radius`` and write their rows."""
    began = time.perf_counter()
    cert = smoothed.certify_radius(
        inputs,
        config["radii"],
        alpha=config["alpha"],
        max_n=config["max_n"],
        n0=n0,
        beta=config["beta"],
        growth=config["growth"],
        generator=generators,
    )
    seconds = (time.perf_counter() - began) / len(chunk)
    rows = zip(
        chunk,
        labels,
        cert.prediction.tolist(),
        cert.radius.tolist(),
        cert.count.tolist(),
        cert.num_samples.tolist(),
        strict=True,
    )
    for i, label, p, r, c, used in rows:
        # the exact radius (repr), so that certified accuracy at a grid radius read back from
        # the file is exactly the sequential result (CERTIFY rows round to 3 digits)
        correct = int(p == label)
        handle.write(
            f"{i}\t{label}\t{p}\t{r!r}\t{correct}\t{timedelta(seconds=seconds)}\t{c}\t{used}\n"
        )
        handle.flush()
    bar.update(len(chunk), int(cert.num_samples.sum()) + n0 * len(chunk))


def _batch_size_for_run(
    smoothed: SmoothedClassifier, dataset: _Dataset, mine: Sequence[int], device: torch.device
) -> int:
    """The forward batch size planned for this run.

    An integer ``batch_size``, else the automatic size known so far (its choice once settled, the
    best size timed so far, or the device's default): it tunes itself on the run's batches.
    """
    if smoothed.batch_size != "auto":
        return smoothed.batch_size
    if not mine:
        return smoothed._planned_batch_size(torch.zeros(1, 1, device=device))
    example = torch.as_tensor(dataset[mine[0]][0]).to(device)[None]
    check_inputs("dataset inputs", example)
    return smoothed._planned_batch_size(example)


def _settled_choices(
    smoothed: SmoothedClassifier, dataset: _Dataset, mine: Sequence[int], device: torch.device
) -> dict[str, Any]:
    """What the run's automatic settings settled on, for the sidecar.

    ``batch_size`` once the search settled, ``channels_last``: whether
    ``memory_format="auto"`` fed the model that layout, and ``batchnorm_folded``: how many
    BatchNorm layers the forward passes had folded.
    """
    if not mine:
        return {}
    key = _auto_key(torch.as_tensor(dataset[mine[0]][0]).to(device)[None])
    settled: dict[str, Any] = {}
    if smoothed.batch_size == "auto" and key in smoothed._chosen_batch_sizes():
        settled["batch_size"] = smoothed._chosen_batch_sizes()[key]
    if smoothed.memory_format == "auto" and key in smoothed._layouts:
        settled["channels_last"] = smoothed._layouts[key]
    if smoothed.fold_batchnorm is not False:
        settled["batchnorm_folded"] = smoothed._folded.folded_layers()
    return settled


def _merge_after_run(out: Path, path: Path, shard: Shard) -> CertificationResults:
    dist = torch.distributed
    if "torch.distributed" in shard.source and dist.is_available() and dist.is_initialized():
        dist.barrier()
        message: list[str | None] = [None]
        if dist.get_rank() == 0:
            try:
                merge_results(out, _discover_parts(out, shard.count))
            except (OSError, ValueError) as error:
                message[0] = f"{type(error).__name__}: {error}"
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None:
            raise ValueError(f"merging the part files into {out} failed: {message[0]}")
        return read_results(out)
    parts = _discover_parts(out, shard.count, must_exist=False)
    states = [_read_sidecar(part) if part.exists() else None for part in parts]
    if all(state is not None and state.get("complete") for state in states):
        return merge_results(out, parts)
    waiting = sum(1 for state in states if not (state and state.get("complete")))
    logger.info(
        "%s: %d of %d parts still running; the last one merges, or run `rsmooth merge %s`",
        path,
        waiting,
        shard.count,
        out,
    )
    return read_results(path)


def _discover_parts(out: Path, count: int | None = None, *, must_exist: bool = True) -> list[Path]:
    if count is None:
        found: dict[int, list[Path]] = {}
        if out.parent.is_dir():
            for candidate in out.parent.iterdir():
                if not candidate.name.startswith(out.name + ".part-"):
                    continue
                match = _PART_RE.search(candidate.name)
                if match and candidate.name == f"{out.name}{match.group(0)}":
                    found.setdefault(int(match.group(2)), []).append(candidate)
        if not found:
            raise FileNotFoundError(f"no part files {out}.part-*-of-* found")
        if len(found) > 1:
            raise ValueError(
                f"part files of {out} from runs with different shard counts {sorted(found)}; "
                "keep one set"
            )
        count = next(iter(found))
    parts = [part_path(out, Shard(i, count)) for i in range(count)]
    if must_exist:
        missing = [i for i, part in enumerate(parts) if not part.exists()]
        if missing:
            raise FileNotFoundError(
                f"part files of {out} missing for shards {missing[:10]} of {count} "
                f"(e.g. {parts[missing[0]]})"
            )
    return parts


def merge_results(
    out: str | os.PathLike[str], parts: Sequence[str | os.PathLike[str]] | None = None
) -> CertificationResults:
    r"""Merge part files into one results file sorted by ``idx``, checking for gaps and duplicates.

    Every part must have the same header; when the parts have settings files (as written by
    :func:`certify_dataset`), the settings must agree and every index of the recorded selection
    must be present (no gaps). An index present in two parts, or twice in one, is an error.
    A half-written last line (a part still running or killed) is ignored, and shows as a gap.
    The merged file is written atomically, with its own settings file.

    Args:
        out: The merged file to write.
        parts: The part files. Default: ``<out>.part-*-of-*`` (all of one shard count, none
            missing).

    Returns:
        The merged :class:`~rsmooth.metrics.CertificationResults`.

    Raises:
        FileNotFoundError: A part is missing.
        ValueError: Headers or settings differ, an index is duplicated, or rows are missing.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        >>> _ = (folder / "r.tsv.part-00000-of-00002").write_text(head + "2\t1\t1\t0.5\t1\t0:00:01\n")
        >>> _ = (folder / "r.tsv.part-00001-of-00002").write_text(head + "1\t0\t-1\t0.0\t0\t0:00:01\n")
        >>> merge_results(folder / "r.tsv").idx.tolist()
        [1, 2]
    """
    out = Path(out)
    paths = _discover_parts(out) if parts is None else [Path(p) for p in parts]
    if not paths:
        raise ValueError("parts must name at least one file, got none")
    header = ""  # set from the first part
    rows: dict[int, tuple[str, Path]] = {}
    config: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None
    selection: list[int] | None = None
    config_from: Path | None = None
    for part in paths:
        if not part.exists():
            raise FileNotFoundError(f"part file {part} not found")
        lines = part.read_bytes().decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] != "":
            lines = lines[:-1]  # half-written last line
        if not lines or lines[0] == "":
            raise ValueError(f"{part}: the file is empty, expected a header line")
        if not header:
            header = lines[0]
        elif lines[0] != header:
            raise ValueError(f"{part}: header {lines[0]!r} differs from {header!r} in {paths[0]}")
        columns = header.split("\t")
        if "idx" not in columns:
            raise ValueError(f"{part}: header must contain the column 'idx', got {columns}")
        position = columns.index("idx")
        for line_number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(columns):
                raise ValueError(
                    f"{part}, line {line_number}: expected {len(columns)} tab-separated fields, "
                    f"got {len(fields)}"
                )
            try:
                idx = int(fields[position])
            except ValueError:
                raise ValueError(
                    f"{part}, line {line_number}: column 'idx' must be int, got {fields[position]!r}"
                ) from None
            if idx in rows:
                raise ValueError(
                    f"duplicate row: idx {idx} appears in {rows[idx][1]} and in {part} "
                    f"(line {line_number})"
                )
            rows[idx] = (line, part)
        recorded = _read_sidecar(part)
        if recorded is not None:
            if config is None:
                config, config_from = recorded["config"], part
                selection = _selection_from_record(recorded.get("selection"))
                identity = recorded.get("identity")
            else:
                mismatch = _config_mismatch(config, recorded["config"])
                if mismatch:
                    raise ValueError(
                        f"{part} was written with other settings than {config_from} "
                        f"({'; '.join(mismatch)})"
                    )
    if selection is not None:
        missing = sorted(set(selection) - rows.keys())
        if missing:
            raise ValueError(
                f"{len(missing)} rows missing from the parts (gaps), e.g. idx {missing[:10]}; "
                "finish (resume) the shards that own them, then merge again"
            )
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(header + "\n")
        for idx in sorted(rows):
            handle.write(rows[idx][0] + "\n")
    os.replace(tmp, out)
    if config is not None:
        _write_json(
            _sidecar(out),
            {
                "format": _FORMAT_VERSION,
                "columns": header.split("\t"),
                "config": config,
                "identity": identity,
                "selection": None if selection is None else _selection_record(selection),
                "shard": None,
                "complete": True,
            },
        )
    return read_results(out)
