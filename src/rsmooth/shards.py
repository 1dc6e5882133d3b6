"""Sharding a dataset run across processes, and merging the part files.

Each process certifies every ``count``-th input of the selection (:class:`Shard`, found by
:func:`detect_shard` from ``torchrun``, an initialised ``torch.distributed`` group or a SLURM job
array) into its own part file (:func:`part_path`); :func:`merge_results` joins the parts into one
file sorted by ``idx``, checking for gaps and duplicates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsmooth._validation import check_int
from rsmooth.results import (
    FORMAT_VERSION,
    CertificationResults,
    RunSettings,
    read_results,
    read_sidecar,
    selection_from_record,
    selection_record,
    sidecar_path,
    write_json,
)

__all__ = [
    "Shard",
    "detect_shard",
    "distributed_group",
    "merge_after_run",
    "merge_results",
    "part_path",
]

logger = logging.getLogger(__name__)

_PART_RE = re.compile(r"\.part-(\d{5,})-of-(\d{5,})$")


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


@contextlib.contextmanager
def distributed_group(device: torch.device) -> Iterator[bool]:
    """Start a ``torch.distributed`` process group under ``torchrun`` when none is running.

    Yields whether it started one (it is destroyed on exit). With a group, the shards of
    :func:`certify_dataset` synchronise and rank 0 merges the parts.
    """
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    start = (
        world > 1
        and "MASTER_ADDR" in os.environ
        and dist.is_available()
        and not dist.is_initialized()
    )
    if start:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield start
    finally:
        if start:
            dist.destroy_process_group()


def merge_after_run(out: Path, path: Path, shard: Shard) -> CertificationResults:
    """After a shard's run: merge the parts when all are done, else return this shard's part.

    Under an initialised ``torch.distributed`` group, every rank waits at a barrier and rank 0
    merges; otherwise the shard that finds every part complete merges them.
    """
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
    states = [read_sidecar(part) if part.exists() else None for part in parts]
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
    config: RunSettings | None = None
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
        recorded = read_sidecar(part)
        if recorded is not None:
            if config is None:
                config, config_from = recorded["settings"], part
                selection = selection_from_record(recorded.get("selection"))
                identity = recorded.get("identity")
            else:
                mismatch = config.mismatch(recorded["settings"])
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
        write_json(
            sidecar_path(out),
            {
                "format": FORMAT_VERSION,
                "columns": header.split("\t"),
                "config": config.to_config(),
                "identity": identity,
                "selection": None if selection is None else selection_record(selection),
                "shard": None,
                "complete": True,
            },
        )
    return read_results(out)
