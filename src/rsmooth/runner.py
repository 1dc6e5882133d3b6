"""Certify a whole dataset into a resumable results file, as one stream, sharded across processes.

:func:`certify_dataset` runs a procedure (CERTIFY, :class:`~rsmooth.procedures.Certify`, or the
sequential radius grid, :class:`~rsmooth.sequential.RadiusGrid`) over a dataset and writes one
tab-separated row per input as soon as that input is done (:mod:`rsmooth.results`: the format
every randomized-smoothing codebase reads). The run's settings are recorded next to the file, in
``<out>.json``.

Properties the runner guarantees:

- **One stream.** Inputs enter the sampling engine as others finish, so the forward batches stay
  full from the first input to the last, whatever stage each input is at (a grid decides inputs
  after different numbers of samples).
- **Deterministic per input.** Input ``i``'s noise depends only on ``(seed, i)`` (and the device
  type), never on which other inputs were certified with it, nor on the batch size. A result is
  the same whether the dataset was certified in one process or many, in one run or resumed.
- **Resumable.** Rerunning with the same ``out`` skips the rows already written, truncates a
  half-written last line (from a killed process) and appends the rest. A file written with
  other settings is refused with an error rather than mixed.
- **Interruptible.** ``SIGTERM`` and ``SIGINT`` stop the stream at the next synchronisation (the
  rows of finished inputs are all written; the inputs in flight are redone by the next run),
  then the signal's previous handler runs (a second signal acts at once).
- **Sharded.** Under ``torchrun`` (``RANK``/``WORLD_SIZE``), an initialised
  ``torch.distributed`` process group, or a SLURM job array, each process certifies every
  ``count``-th input into its own part file ``<out>.part-00000-of-00002``; the parts are merged
  into ``out`` at the end (:func:`merge_results`, also ``rsmooth merge``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

import torch

from rsmooth._engine.progress import Progress
from rsmooth._engine.sampler import Item
from rsmooth._engine.streams import input_seeds, run_seed
from rsmooth._validation import check_input_range, check_inputs, check_int
from rsmooth.procedures import Certify, CertifyRow, SampleSizeWarning, warn_sample_size
from rsmooth.results import (  # COLUMNS and write_results: importable from here, as in 0.2
    COLUMNS,  # noqa: F401
    FORMAT_VERSION,
    CertificationResults,
    RunSettings,
    format_row,
    header,
    read_results,
    read_sidecar,
    scan_rows,
    selection_record,
    sidecar_path,
    write_json,
    write_results,  # noqa: F401
)
from rsmooth.sequential import GridRow, RadiusGrid
from rsmooth.shards import (  # merge_results: importable from here, as in 0.2
    Shard,
    detect_shard,
    merge_after_run,
    merge_results,  # noqa: F401
    part_path,
)
from rsmooth.smoothing import SmoothedClassifier

__all__ = ["certify_dataset", "input_seed"]

logger = logging.getLogger(__name__)


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
    return run_seed(check_int("seed", seed, min=0), check_int("index", index, min=0))


# ---------------------------------------------------------------------------- file handling
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


def _open_for_append(
    path: Path,
    settings: RunSettings,
    selection: Sequence[int],
    shard: Shard,
    identity: dict[str, Any] | None = None,
    force: bool = False,
) -> tuple[TextIO, set[int]]:
    """Open (or create) a results file for appending; return it and the indices already done."""
    done: list[int] = []
    columns = header(settings)
    head = ("\t".join(columns) + "\n").encode()
    fresh = True
    if path.exists():
        data = path.read_bytes()
        if len(data) >= len(head) or not head.startswith(data):
            fresh = False
            recorded = read_sidecar(path)
            mismatch = [] if recorded is None else recorded["settings"].mismatch(settings)
            if mismatch:
                raise ValueError(
                    f"{path} was written with other settings ({'; '.join(mismatch)}); "
                    "choose another out, or rerun with the file's settings to resume"
                )
            if not data.startswith(head):
                first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
                raise ValueError(
                    f"{path} exists with a different header ({first!r}, expected "
                    f"{head.decode().strip()!r}); choose another out or delete the file"
                )
            end = data.rfind(b"\n") + 1
            if end < len(data):
                logger.info("%s: truncating a half-written last line", path)
                with open(path, "r+b") as damaged:
                    damaged.truncate(end)
                data = data[:end]
            done = scan_rows(path, data, len(columns))
            duplicates = sorted(i for i, times in Counter(done).items() if times > 1)
            if duplicates:
                raise ValueError(f"{path}: idx {duplicates[:5]} appear more than once")
            if recorded is None and done:
                raise ValueError(
                    f"{path} has {len(done)} rows but no settings file "
                    f"{sidecar_path(path).name}, so it cannot be resumed safely; choose another "
                    "out or delete the file"
                )
            if recorded is not None:
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
    write_json(
        sidecar_path(path),
        {
            "format": FORMAT_VERSION,
            "columns": columns,
            "config": settings.to_config(),
            "identity": identity,
            "selection": selection_record(selection),
            "shard": None if shard.count == 1 else [shard.index, shard.count],
            "complete": False,
        },
    )
    handle: TextIO
    if fresh:
        handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        handle.write("\t".join(columns) + "\n")
        handle.flush()
    else:
        handle = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
    return handle, set(done)


def _mark_complete(path: Path, chosen: Mapping[str, Any]) -> None:
    """Mark a part complete in its sidecar, recording what the run chose (batch size, layout)."""
    data = read_sidecar(path)
    if data is not None:
        data["complete"] = True
        data["config"].update(chosen)
        write_json(sidecar_path(path), data)


# ---------------------------------------------------------------------------- signals
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
    procedure: Certify | RadiusGrid | None = None,
    *,
    seed: int = 0,
    skip: int = 1,
    stop: int | None = None,
    indices: Iterable[int] | None = None,
    device: torch.device | str | None = None,
    shard: Shard | tuple[int, int] | None = None,
    merge: bool = True,
    progress: bool = True,
    identity: Mapping[str, Any] | None = None,
    force: bool = False,
) -> CertificationResults:
    r"""Certify a dataset with a procedure as one stream, one resumable results row per input.

    Selects the inputs ``i`` with ``i % skip == 0`` and ``i < stop`` (the reference
    ``certify.py``'s ``--skip`` and ``--max``), or the given ``indices``; seeds input ``i``'s
    noise from :func:`input_seed` ``(seed, i)``; streams them through the smoothed classifier's
    engine (an input enters as soon as the forward batches need more samples, so they stay full);
    and appends a row per input to ``out`` as soon as that input is done (flushed per row, in the
    order the inputs finish). The ``time`` column is the wall time since the previous row, so it
    sums to the run's time. The settings (:class:`~rsmooth.results.RunSettings`: the
    procedure's, ``sigma`` and ``seed``) are recorded in ``<out>.json`` with the batch size and
    layout used, which do not change the results (a run may resume with others).

    **Resuming.** If ``out`` exists, its rows are kept and only missing inputs are certified; a
    half-written last line is truncated first. The settings must match the recorded ones
    (``ValueError`` otherwise), and so must the run's identity (the model's weights and
    ``identity``) unless ``force=True``. The selection may change between runs (e.g. a larger
    ``stop``); rows outside the new selection stay in the file.

    **Interrupting.** ``SIGTERM`` or ``SIGINT`` (Ctrl-C) stop the run at the next
    synchronisation with every finished input's row written; then the previous handler gets the
    signal (``KeyboardInterrupt`` for ``SIGINT`` by default, process exit for ``SIGTERM``). A
    second signal acts at once; a killed run leaves at most a half line, repaired by the next
    run. A signal the process ignores stays ignored: a run started in the background
    (``nohup``, or ``cmd &`` from a script) inherits ``SIGINT`` as ignored, so Ctrl-C or ``kill
    -INT`` does not stop it; stop such a run with ``SIGTERM`` (``kill PID``). The same holds for
    a handler installed from C (``signal.getsignal`` returns ``None``), which is left alone.

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
        procedure: :class:`~rsmooth.procedures.Certify` (CERTIFY) or
            :class:`~rsmooth.sequential.RadiusGrid` (decisions at a grid of radii with far fewer
            samples; no ACR, certified accuracy at the grid radii only). Default:
            ``Certify()`` (``n=100_000``, ``n0=100``, ``alpha=0.001``).
        seed: Seed of the run (``>= 0``). Default: 0.
        skip: Certify every ``skip``-th input. Default: 1.
        stop: Certify only inputs with index ``< stop``. Default: all.
        indices: Explicit dataset indices instead of ``skip``/``stop``.
        device: Device for the inputs and the noise. Default: the model's.
        shard: ``Shard`` or ``(index, count)``. Default: :func:`detect_shard`.
        merge: Merge the part files into ``out`` at the end when sharded. Default: True.
        progress: Show rows done, samples/s and time left on stderr (tqdm when installed, the
            ``progress`` extra). Default: True.
        identity: What identifies the run besides the settings, recorded in ``<out>.json``
            (JSON values, e.g. ``{"model": ..., "dataset": ..., "split": ...}``; the command
            line records the model spec, the checkpoint's SHA-256, the dataset, split and
            options). A SHA-256 of the model's state dict is always added as ``model_hash``.
            Resuming a file whose recorded identity differs is refused with an error naming
            the difference, so that two models' rows are never mixed in one file.
        force: Resume even when the recorded identity differs (a warning is logged).
            Default: False.

    Returns:
        The :class:`~rsmooth.results.CertificationResults` of the whole of ``out`` (of this
        shard's part file when the parts were not merged by this process).

    Raises:
        TypeError: An argument has the wrong type, or the dataset gives non-integer labels.
        ValueError: An argument is out of range, or ``out`` exists with another header or
            other settings, or is damaged, or merging found gaps or duplicates.

    Warns:
        SampleSizeWarning: CERTIFY's ``n`` is too small for any input ever to be certified.
        UnreachableRadiusWarning: Some grid radii cannot be certified within ``max_n``.

    Example:
        >>> import tempfile, pathlib
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from rsmooth.procedures import Certify
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.rand(6, 2, generator=g), torch.tensor([0, 1, 0, 1, 0, 1]))
        >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.25)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "results.tsv"
        >>> res = certify_dataset(smoothed, data, out, Certify(n=200, n0=20), progress=False)
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
    procedure = Certify() if procedure is None else procedure
    if not isinstance(procedure, (Certify, RadiusGrid)):
        raise TypeError(
            "procedure must be rsmooth.procedures.Certify or rsmooth.sequential.RadiusGrid, got "
            f"{type(procedure).__name__}"
        )
    seed = check_int("seed", seed, min=0)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path, got {type(out).__name__}")
    shard = _check_shard(shard)
    device = _default_device(smoothed) if device is None else torch.device(device)
    selection = _select(len(dataset), indices, skip, stop)
    if isinstance(procedure, Certify):
        warn_sample_size("certify", procedure.n, procedure.alpha, stacklevel=2)
        bound: Any = procedure.bind(smoothed.sigma)
    else:
        bound = procedure.bind(smoothed.sigma, stacklevel=2)
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
    probe = _probe(dataset, selection, smoothed, device)
    settings = _settings(procedure, smoothed, seed, getattr(bound, "looks", None))
    out = Path(out)
    path = part_path(out, shard)
    handle, done = _open_for_append(path, settings, selection, shard, run_identity, force)
    todo = [i for i in mine if i not in done]
    show = progress and os.environ.get("LOCAL_RANK", "0") == "0"
    desc = "certify" if shard.count == 1 else f"certify {shard.index}/{shard.count}"
    bar = Progress(len(mine), desc, unit="row", initial=len(mine) - len(todo), enabled=show)
    labels: dict[int, int] = {}
    last = [time.perf_counter()]

    def write(key: Hashable, row: CertifyRow | GridRow) -> None:
        index = int(key)  # type: ignore[call-overload]
        now = time.perf_counter()
        seconds, last[0] = now - last[0], now
        handle.write(_row_text(index, labels.pop(index), row, seconds, settings))
        handle.flush()

    guard = _SignalGuard()
    chosen: dict[str, Any] = {}
    try:
        with guard, warnings.catch_warnings():
            warnings.simplefilter("ignore", SampleSizeWarning)  # warned once above
            if todo:
                chosen = smoothed.run_stream(
                    bound,
                    _items(dataset, todo, labels, seed, device),
                    write,
                    probe=probe,
                    progress=bar,
                    stop=lambda: guard.received is not None,
                )
    finally:
        handle.close()
        bar.close()
    if guard.received is not None:
        guard.redeliver()  # the previous handler decides (exit, KeyboardInterrupt, ...)
        return read_results(path)
    _mark_complete(path, {key: value for key, value in chosen.items() if value is not None})
    if shard.count == 1 or not merge:
        return read_results(path)
    return merge_after_run(out, path, shard)


def _check_shard(shard: Shard | tuple[int, int] | None) -> Shard:
    if shard is None:
        return detect_shard()
    if isinstance(shard, Shard):
        return shard
    if not (isinstance(shard, tuple) and len(shard) == 2):
        raise TypeError(f"shard must be a Shard or an (index, count) tuple, got {shard!r}")
    return Shard(shard[0], shard[1], "argument")


def _settings(
    procedure: Certify | RadiusGrid,
    smoothed: SmoothedClassifier,
    seed: int,
    looks: tuple[int, ...] | None,
) -> RunSettings:
    recorded = {"batch_size": smoothed.batch_size, "memory_format": smoothed.memory_format}
    if isinstance(procedure, Certify):
        return RunSettings(
            kind="certify", sigma=smoothed.sigma, alpha=procedure.alpha, n0=procedure.n0,
            seed=seed, n=procedure.n, bound=procedure.bound, recorded=recorded,
        )  # fmt: skip
    return RunSettings(
        kind="grid", sigma=smoothed.sigma, alpha=procedure.alpha, n0=procedure.n0, seed=seed,
        radii=procedure.radii, max_n=procedure.max_n, beta=procedure.beta,
        growth=procedure.growth, looks=looks, recorded=recorded,
    )  # fmt: skip


def _row_text(
    index: int, label: int, row: CertifyRow | GridRow, seconds: float, settings: RunSettings
) -> str:
    if isinstance(row, GridRow):
        return format_row(
            index, label, row.prediction, row.radius, seconds, row.count, row.num_samples,
            row.status,
        )  # fmt: skip
    return format_row(index, label, row.prediction, row.radius, seconds, row.count, settings.n or 0)


def _probe(
    dataset: _Dataset, selection: Sequence[int], smoothed: SmoothedClassifier, device: torch.device
) -> torch.Tensor:
    """The first inputs of the selection (whatever is done): they decide the layout, once."""
    if not selection:
        return torch.zeros(0)
    first = [torch.as_tensor(dataset[i][0]) for i in selection[:32]]
    probe = torch.stack(first).to(device)
    check_inputs("dataset inputs", probe)
    check_input_range(  # fail on a wrong input range before any file is written
        f"dataset[{selection[0]}] input",
        probe[:1],
        smoothed.input_range,
        switch="input_range=None to SmoothedClassifier (--input-range none in the CLI)",
    )
    return probe


def _items(
    dataset: _Dataset, todo: Sequence[int], labels: dict[int, int], seed: int, device: torch.device
) -> Iterator[Item]:
    """The stream of inputs to certify, loaded as the engine admits them."""
    for i in todo:
        value, label = dataset[i][0], dataset[i][1]
        inputs = torch.as_tensor(value).to(device)
        check_inputs(f"dataset[{i}] input", inputs[None])
        labels[i] = _label(label, i)
        generator = torch.Generator(device=device).manual_seed(run_seed(seed, i))
        yield Item(i, inputs, input_seeds(1, [generator])[0])
