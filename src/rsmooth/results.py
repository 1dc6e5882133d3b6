r"""Results files: the one owner of the row format and of the run's settings record.

A results file is tab-separated, one row per input, in the format every randomized-smoothing
codebase reads: ``idx label predict radius correct time`` (``certify.py`` of
:cite:`cohen2019certified`), to which rsmooth adds ``count`` (votes for the predicted class) and
``n`` (estimation samples drawn). A file from the sequential procedure
(:class:`~rsmooth.sequential.RadiusGrid`, ``rsmooth certify --radii``) carries its **kind in the
file itself**: one more column, named ``grid:`` followed by the radii (``grid:0.25,0.5,1.0``),
whose value is a letter per radius (``C`` certified, ``R`` ruled out, ``U`` undecided, ``X``
unreachable). Readers of the research format ignore extra columns; :func:`read_results` reads
the kind from it, so a file is recognised without its settings file, and files written by the
research code read as CERTIFY files.

The settings that produced a file are recorded next to it in ``<file>.json`` as a
:class:`RunSettings` (with the run's identity, selection and progress), so that a run can be
resumed, merged and reported.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rsmooth._validation import check_int
from rsmooth.certificates import (
    CERTIFIED,
    RULED_OUT,
    UNDECIDED,
    UNREACHABLE,
    Certificate,
    RadiusCertificate,
    ResultKind,
)
from rsmooth.stats import max_certified_radius

__all__ = [
    "COLUMNS",
    "GRID_PREFIX",
    "CertificationResults",
    "RunSettings",
    "radius_text",
    "read_results",
    "read_sidecar",
    "sidecar_path",
    "write_results",
]

#: Columns of a CERTIFY results file, in order. The first six are the reference format; ``count``
#: and ``n`` allow re-analysis at another ``alpha``.
COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time", "count", "n")
#: The name of a grid file's extra column starts with this, followed by the radii.
GRID_PREFIX = "grid:"
FORMAT_VERSION = 2

_STATUS_LETTERS = {CERTIFIED: "C", RULED_OUT: "R", UNDECIDED: "U", UNREACHABLE: "X"}
_LETTER_STATUS = {letter: status for status, letter in _STATUS_LETTERS.items()}
_REQUIRED_COLUMNS = ("idx", "label", "predict", "radius")


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class RunSettings:
    """What produced a results file: the procedure's settings and the run's seed.

    The fields up to ``looks`` decide the results: a run resumes or merges only with the same
    ones. ``recorded`` holds what does not change them (batch size, layout, chosen sizes).

    Attributes:
        kind: ``"certify"`` (CERTIFY) or ``"grid"`` (the sequential procedure).
        sigma: Noise level.
        alpha: Failure probability.
        n0: Selection samples per input.
        seed: The run's seed (None for certificates written by hand).
        n: CERTIFY's estimation samples per input (None for a grid).
        bound: CERTIFY's bound (``"clopper-pearson"`` or ``"randomized"``).
        radii: The grid (None for CERTIFY).
        max_n: The grid's largest number of estimation samples.
        beta: The grid's futility level.
        growth: The grid's look ratio.
        looks: The grid's look schedule.
        recorded: Further settings that do not change the results.
    """

    kind: ResultKind
    sigma: float
    alpha: float
    n0: int
    seed: int | None = None
    n: int | None = None
    bound: str = "clopper-pearson"
    radii: tuple[float, ...] | None = None
    max_n: int | None = None
    beta: float | None = None
    growth: float | None = None
    looks: tuple[int, ...] | None = None
    recorded: Mapping[str, Any] = field(default_factory=dict)

    @property
    def radius_cap(self) -> float | None:
        """CERTIFY's largest possible radius (None for a grid)."""
        if self.kind != "certify" or self.n is None:
            return None
        return max_certified_radius(self.n, self.alpha, self.sigma)

    def to_config(self) -> dict[str, Any]:
        """The JSON object stored as the sidecar's ``"config"``."""
        config = {key: value for key, value in asdict(self).items() if key != "recorded"}
        for key in ("radii", "looks"):
            if config[key] is not None:
                config[key] = list(config[key])
        if self.kind == "certify":
            for key in ("radii", "max_n", "beta", "growth", "looks"):
                config.pop(key)
        else:
            config.pop("n")
            config.pop("bound")
        config.update(self.recorded)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Read a sidecar's ``"config"`` (also the 0.2 format, whose grids say ``"mode"``).

        Raises:
            ValueError: The object lacks a setting or holds a value of the wrong type.
        """
        data = dict(config)
        kind = data.pop("kind", None)
        if kind is None:  # rsmooth 0.2
            kind = "grid" if data.get("mode") == "sequential" else "certify"
        data.pop("mode", None)
        names = {f.name for f in fields(cls)} - {"kind", "recorded"}
        known = {key: data.pop(key) for key in list(data) if key in names}
        try:
            for key in ("radii", "looks"):
                if known.get(key) is not None:
                    known[key] = tuple(known[key])
            settings = cls(kind=kind, recorded=data, **known)
            float(settings.sigma), float(settings.alpha), int(settings.n0)
        except (TypeError, ValueError) as error:
            raise ValueError(f"not a valid settings record ({error})") from None
        if kind not in ("certify", "grid") or (kind == "grid") != (settings.radii is not None):
            raise ValueError(f"not a valid settings record (kind {kind!r})")
        return settings

    def mismatch(self, other: RunSettings) -> list[str]:
        """The settings that differ from ``other``'s and change the results, as text."""
        keys = [f.name for f in fields(self) if f.name != "recorded"]
        return [
            f"{key}={getattr(self, key)!r} in the file, {getattr(other, key)!r} now"
            for key in keys
            if getattr(self, key) != getattr(other, key)
        ]


# ---------------------------------------------------------------------------- rows
def radius_text(radius: float) -> str:
    """``radius`` to 3 significant digits, as the research code writes it, but rounded *down*.

    Rounding to nearest could write 0.4996 as ``0.5`` and so count the input as certified at
    r = 0.5 when the file is read back; rounding down never claims more than was certified.

    Example:
        >>> radius_text(0.4996), radius_text(1.23456), radius_text(0.0), radius_text(2.0)
        ('0.499', '1.23', '0.0', '2.0')
    """
    if radius <= 0.0 or not math.isfinite(radius):
        return f"{radius:.3}"
    exact = Decimal(repr(radius))  # the shortest text that reads back as the same float
    down = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 2), rounding=ROUND_FLOOR)
    return f"{float(down):.3}"


def grid_column(radii: Sequence[float]) -> str:
    """The name of a grid file's status column.

    Example:
        >>> grid_column([0.25, 0.5, 1.0])
        'grid:0.25,0.5,1.0'
    """
    return GRID_PREFIX + ",".join(repr(float(r)) for r in radii)


def header(settings: RunSettings) -> list[str]:
    """The columns of a file of this kind."""
    if settings.kind == "grid" and settings.radii is not None:
        return [*COLUMNS, grid_column(settings.radii)]
    return list(COLUMNS)


def format_row(
    idx: int,
    label: int,
    prediction: int,
    radius: float,
    seconds: float,
    count: int,
    n: int,
    status: Sequence[int] | None = None,
) -> str:
    r"""One line of a results file (with its newline).

    A CERTIFY row's radius is rounded down to 3 significant digits (:func:`radius_text`); a grid
    row (with ``status``) keeps the exact radius, and its status letters.

    Example:
        >>> format_row(3, 1, 1, 0.4996, 2.5, 97, 100)
        '3\t1\t1\t0.499\t1\t0:00:02.500000\t97\t100\n'
        >>> format_row(3, 1, 1, 0.5000001, 2.5, 97, 100, status=(1, 1, 0))
        '3\t1\t1\t0.5000001\t1\t0:00:02.500000\t97\t100\tCCR\n'
    """
    correct = int(prediction == label)
    text = radius_text(radius) if status is None else repr(float(radius))
    line = f"{idx}\t{label}\t{prediction}\t{text}\t{correct}\t{timedelta(seconds=seconds)}"
    line += f"\t{count}\t{n}"
    if status is not None:
        line += "\t" + "".join(_STATUS_LETTERS[s] for s in status)
    return line + "\n"


def scan_rows(path: Path, data: bytes, columns: int) -> list[int]:
    """Indices of the complete rows of a results file's contents (header already checked)."""
    text = data.decode("utf-8", errors="replace")
    indices = []
    for line_number, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != columns:
            raise ValueError(
                f"{path}, line {line_number}: expected {columns} tab-separated fields, got "
                f"{len(values)}; the file is damaged"
            )
        try:
            indices.append(int(values[0]))
        except ValueError:
            raise ValueError(
                f"{path}, line {line_number}: column 'idx' must be int, got {values[0]!r}"
            ) from None
    return indices


# ---------------------------------------------------------------------------- the sidecar
def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<path>.json``, where a results file's settings are recorded."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings file of a results file, or None when there is none.

    Raises:
        ValueError: The settings file exists but is not valid.
    """
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        data = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{side}: not a valid rsmooth settings file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{side}: not a valid rsmooth settings file (no 'config' object)")
    try:
        data["settings"] = RunSettings.from_config(data["config"])
    except ValueError as error:
        raise ValueError(f"{side}: {error}") from None
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` (without a ``"settings"`` entry) atomically as JSON."""
    record = {key: value for key, value in data.items() if key != "settings"}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def selection_record(selection: Sequence[int]) -> dict[str, Any]:
    """A compact JSON record of the selected indices (a range when they are evenly spaced)."""
    if len(selection) >= 2:
        step = selection[1] - selection[0]
        if step > 0 and all(b - a == step for a, b in itertools.pairwise(selection)):
            return {"start": selection[0], "stop": selection[-1] + 1, "step": step}
    return {"indices": list(selection)}


def selection_from_record(record: Any) -> list[int] | None:
    """The indices of a :func:`selection_record`, or None."""
    if not isinstance(record, dict):
        return None
    if "indices" in record:
        return [int(i) for i in record["indices"]]
    return list(range(int(record["start"]), int(record["stop"]), int(record["step"])))


# ---------------------------------------------------------------------------- reading
@dataclass(frozen=True, eq=False, slots=True)
class CertificationResults:
    """Rows of a certification results file, as tensors of shape ``[N]`` on the CPU.

    Attributes:
        idx: Dataset index of each row.
        label: True class.
        prediction: Certified class, -1 for an abstention (column ``predict``).
        radius: Certified radius as written (3 significant digits in the reference format).
        correct: Whether the prediction was correct (column ``correct``, or ``predict == label``
            when the file has no such column).
        count: Votes for the selected class (``count`` column, written by rsmooth), or None.
        n: Estimation samples per row (``n`` column, written by rsmooth), or None.
        path: The file the rows were read from.
        kind: ``"certify"`` or ``"grid"``, from the file's columns.
        radii: A grid file's radii (None for CERTIFY).
        status: A grid file's decisions ``[N, J]`` (``int8``, the statuses of
            :class:`~rsmooth.RadiusCertificate`), or None.
        settings: The run's settings from the settings file, or None when it has none.
    """

    idx: Tensor
    label: Tensor
    prediction: Tensor
    radius: Tensor
    correct: Tensor
    count: Tensor | None = None
    n: Tensor | None = None
    path: str | None = None
    kind: ResultKind = "certify"
    radii: tuple[float, ...] | None = None
    status: Tensor | None = None
    settings: RunSettings | None = None

    def __len__(self) -> int:
        return int(self.idx.shape[0])


def _parse(value: str, kind: type, path: str, line: int, column: str) -> float | int:
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: column {column!r} must be {kind.__name__}, got {value!r}"
        ) from None
    if kind is float and not math.isfinite(number):
        raise ValueError(f"{path}, line {line}: column {column!r} must be finite, got {value!r}")
    return number


def _grid_radii(name: str, column: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in column[len(GRID_PREFIX) :].split(","))
    except ValueError:
        raise ValueError(f"{name}: column {column!r} must name the grid's radii") from None


def read_results(path: str | os.PathLike[str]) -> CertificationResults:
    r"""Read a tab-separated certification results file.

    The header must contain ``idx``, ``label``, ``predict`` and ``radius``; ``correct``,
    ``count``, ``n`` and ``time`` are optional and other columns are ignored, so files written
    by the reference codebases (Cohen et al., Salman et al., SmoothMix, ...) are read too, as
    CERTIFY results. A ``grid:`` column marks a sequential (grid) file. The settings file
    ``<path>.json``, when present, is read too.

    Args:
        path: The file.

    Returns:
        The rows as :class:`CertificationResults`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The header lacks a required column, or a row is malformed.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.tsv"
        >>> _ = f.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t0:00:01\n")
        >>> res = read_results(f)
        >>> len(res), res.radius.tolist(), res.kind
        (1, [0.5], 'certify')
    """
    name = os.fspath(path)
    with open(name, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            columns = [column.strip() for column in next(reader)]
        except StopIteration:
            raise ValueError(f"{name}: the file is empty, expected a header line") from None
        missing = [column for column in _REQUIRED_COLUMNS if column not in columns]
        if missing:
            raise ValueError(
                f"{name}: header must contain the columns {list(_REQUIRED_COLUMNS)}, "
                f"missing {missing} in {columns}"
            )
        position = {column: columns.index(column) for column in columns}
        grids = [column for column in columns if column.startswith(GRID_PREFIX)]
        radii = _grid_radii(name, grids[0]) if grids else None
        optional = [column for column in ("correct", "count", "n") if column in position]
        values: dict[str, list[float | int]] = {c: [] for c in _REQUIRED_COLUMNS + tuple(optional)}
        letters: list[list[int]] = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(columns):
                raise ValueError(
                    f"{name}, line {line}: expected {len(columns)} tab-separated fields, "
                    f"got {len(row)}"
                )
            for column in values:
                kind = float if column == "radius" else int
                values[column].append(
                    _parse(row[position[column]].strip(), kind, name, line, column)
                )
            if radii is not None:
                letters.append(_statuses(row[position[grids[0]]].strip(), radii, name, line))

    def long(column: str) -> Tensor:
        return torch.tensor(values[column], dtype=torch.long)

    prediction, label = long("predict"), long("label")
    radius = torch.tensor(values["radius"], dtype=torch.float64)
    if (radius < 0).any():
        raise ValueError(f"{name}: column 'radius' must be non-negative")
    correct = long("correct").bool() if "correct" in values else prediction == label
    recorded = read_sidecar(name)
    settings = None if recorded is None else recorded["settings"]
    if settings is not None and (settings.kind == "grid") != (radii is not None):
        raise ValueError(
            f"{name}: its settings file records a {settings.kind} run but its columns are "
            f"those of a {'grid' if radii is not None else 'certify'} run"
        )
    status = None
    if radii is not None:
        status = torch.tensor(letters, dtype=torch.int8).reshape(len(letters), len(radii))
    return CertificationResults(
        idx=long("idx"),
        label=label,
        prediction=prediction,
        radius=radius,
        correct=correct,
        count=long("count") if "count" in values else None,
        n=long("n") if "n" in values else None,
        path=name,
        kind="grid" if radii is not None else "certify",
        radii=radii,
        status=status,
        settings=settings,
    )


def _statuses(text: str, radii: tuple[float, ...], name: str, line: int) -> list[int]:
    if len(text) != len(radii) or any(letter not in _LETTER_STATUS for letter in text):
        raise ValueError(
            f"{name}, line {line}: the grid column must hold one of C, R, U, X per radius "
            f"({len(radii)}), got {text!r}"
        )
    return [_LETTER_STATUS[letter] for letter in text]


# ---------------------------------------------------------------------------- writing
def write_results(
    path: str | os.PathLike[str],
    certificate: Certificate | RadiusCertificate,
    labels: Sequence[int] | Tensor,
    *,
    times: float | Sequence[float] | Tensor | None = None,
    indices: Sequence[int] | Tensor | None = None,
) -> CertificationResults:
    r"""Write a certificate to a standard results file, with its settings file.

    The file has the columns :data:`COLUMNS` (and a grid column for a
    :class:`~rsmooth.RadiusCertificate`), the format :func:`~rsmooth.runner.certify_dataset`
    writes and every randomized-smoothing codebase reads; ``<path>.json`` records the
    certificate's settings (what ``rsmooth report`` shows). Use it for certificates from your own
    loop, without the dataset runner. An existing file is replaced.

    Args:
        path: The results file to write.
        certificate: The certificate of ``B`` inputs.
        labels: The true class of each input, ``B`` integers.
        times: Seconds spent per input: one number for every input (e.g. the call's time
            divided by ``B``), or ``B`` numbers. Default: 0.
        indices: The dataset index of each input (column ``idx``). Default: ``0..B-1``.

    Returns:
        The :class:`CertificationResults` read back from ``path``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``labels``, ``times`` or ``indices`` do not have one entry per input, or
            hold negative values.

    Example:
        >>> import tempfile, pathlib
        >>> from torch import nn
        >>> from rsmooth import SmoothedClassifier
        >>> g = torch.Generator().manual_seed(0)
        >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.25)
        >>> x, y = torch.rand(3, 2, generator=g), torch.tensor([0, 1, 0])
        >>> cert = smoothed.certify(x, n0=10, n=100, alpha=0.01, generator=g)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "mine.tsv"
        >>> res = write_results(out, cert, y, times=0.5)
        >>> len(res), res.n.tolist(), res.kind
        (3, [100, 100, 100], 'certify')
    """
    if not isinstance(certificate, (Certificate, RadiusCertificate)):
        raise TypeError(
            "certificate must be a Certificate or a RadiusCertificate, got "
            f"{type(certificate).__name__}"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path, got {type(path).__name__}")
    size = len(certificate)
    label_list = _column("labels", labels, size, integer=True)
    time_list = _column("times", 0.0 if times is None else times, size, integer=False)
    index_list = _column(
        "indices", list(range(size)) if indices is None else indices, size, integer=True
    )
    if len(set(index_list)) != size:
        raise ValueError("indices must not repeat an index")
    settings = settings_of(certificate)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    predictions = certificate.prediction.tolist()
    radii = certificate.radius.tolist()
    counts = certificate.count.tolist()
    if isinstance(certificate, RadiusCertificate):
        used = certificate.num_samples.tolist()
        statuses: list[Any] = certificate.status.tolist()
    else:
        used, statuses = [certificate.n] * size, [None] * size
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write("\t".join(header(settings)) + "\n")
        for j in range(size):
            handle.write(
                format_row(
                    index_list[j], label_list[j], predictions[j], radii[j], time_list[j],
                    counts[j], used[j], statuses[j],
                )
            )  # fmt: skip
    os.replace(tmp, out)
    write_json(
        sidecar_path(out),
        {
            "format": FORMAT_VERSION,
            "columns": header(settings),
            "config": settings.to_config(),
            "identity": None,
            "selection": selection_record(index_list),
            "shard": None,
            "complete": True,
        },
    )
    return read_results(out)


def settings_of(certificate: Certificate | RadiusCertificate) -> RunSettings:
    """The :class:`RunSettings` a certificate was made with (no seed: it is not known)."""
    if isinstance(certificate, RadiusCertificate):
        return RunSettings(
            kind="grid",
            sigma=certificate.sigma,
            alpha=certificate.alpha,
            n0=certificate.n0,
            radii=certificate.radii,
            max_n=certificate.max_n,
            beta=certificate.beta,
            growth=certificate.growth,
            looks=certificate.looks,
        )
    return RunSettings(
        kind="certify",
        sigma=certificate.sigma,
        alpha=certificate.alpha,
        n0=certificate.n0,
        n=certificate.n,
    )


def _column(name: str, value: Any, size: int, *, integer: bool) -> list[Any]:
    if isinstance(value, Tensor):
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


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must hold numbers of seconds, got {type(value).__name__}")
    if not (value >= 0 and value != float("inf")):
        raise ValueError(f"{name} must be non-negative finite seconds, got {value}")
    return float(value)
