"""What the data tests share: small files in the real formats (IDX, CIFAR pickles, SVHN .mat, STL-10
binaries) written to a temporary folder, their round-trip checks, and the CLI helpers."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from bench.cli import main
from bench.data import DatasetSplits
from tests.conftest import TINY_SUITE

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RNG = np.random.default_rng(1234)


def assert_images_and_labels(d: DatasetSplits, shape: tuple[int, int, int], n_train: int, n_test: int,
                             num_classes: int = 10) -> None:
    for x, y, n in ((d.train_x, d.train_y, n_train), (d.test_x, d.test_y, n_test)):
        assert x.shape == (n, *shape) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (n,) and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1
        assert 0 <= y.min() and y.max() < num_classes
    assert d.num_classes == num_classes
    assert d.class_names is None or len(d.class_names) == num_classes


def pretend_official(monkeypatch: pytest.MonkeyPatch, cls: type, root: Path) -> None:
    """Make the files written under ``root`` the official ones: torchvision's MD5 lists of ``cls`` (which
    torchvision checks on every load, and advbench's check before it) get the files' MD5s."""

    def md5(relative: str) -> str:
        return hashlib.md5((root / relative).read_bytes()).hexdigest()

    folder = getattr(cls, "base_folder", "")
    for attr in ("train_list", "test_list"):
        if hasattr(cls, attr):
            monkeypatch.setattr(cls, attr, [[f, md5(f"{folder}/{f}")] for f, _ in getattr(cls, attr)])
    if isinstance(getattr(cls, "meta", None), dict):
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(f"{folder}/{cls.meta['filename']}")})
    if hasattr(cls, "split_list"):
        monkeypatch.setattr(cls, "split_list", {split: [url, f, md5(f) if (root / f).is_file() else old]
                                                for split, (url, f, old) in cls.split_list.items()})


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def validate_error(capsys, suite: Path, data_dir: Path) -> str:
    """``advbench validate``'s one-line error for a suite that must fail (exit 2)."""
    code, _, err = run_cli(capsys, "validate", suite, "--data-dir", data_dir)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"advbench: error: {suite}: datasets[0]: "), err
    return err


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 0, 0, type 0x08 (uint8), number of dims, big-endian uint32 sizes, data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist_files(folder: Path, compress: bool, n_train: int = 12, n_test: int = 7) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 3, 5] = 255  # a known pixel: row 3, column 5 of the first image
    arrays["train-images-idx3-ubyte"][0, 5, 3] = 0
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


def assert_mnist_round_trip(d: DatasetSplits, arrays: dict[str, np.ndarray]) -> None:
    assert_images_and_labels(d, (1, 28, 28), 12, 7)
    assert d.train_x[0, 0, 3, 5] == 1 and d.train_x[0, 0, 5, 3] == 0
    np.testing.assert_array_equal((d.train_x[:, 0] * 255).round().numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal((d.test_x[:, 0] * 255).round().numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(d.train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(d.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])


def nchw_uint8(n: int, size: int) -> np.ndarray:
    images = RNG.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    images[0, 2, 1, 3] = 255  # a known pixel: blue channel, row 1, column 3 of the first image
    images[0, 2, 3, 1] = 0
    return images


def assert_colour_round_trip(d: DatasetSplits, train: np.ndarray, test: np.ndarray) -> None:
    assert d.train_x[0, 2, 1, 3] == 1 and d.train_x[0, 2, 3, 1] == 0
    np.testing.assert_array_equal((d.train_x * 255).round().numpy(), train)
    np.testing.assert_array_equal((d.test_x * 255).round().numpy(), test)


def write_pickle(path: Path, obj: dict) -> None:
    # The official files are Python 2 pickles; torchvision loads them with encoding="latin1", which turns
    # their keys into str -- what a Python 3 pickle with str keys gives too.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """CIFAR-10's five training batches (two images each), test batch (three) and meta file, under root."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, test = nchw_uint8(10, 32), nchw_uint8(3, 32)
    train_y, test_y = RNG.integers(0, 10, 10).tolist(), [9, 0, 4]
    for i in range(5):  # two images per batch; rows are 1024 red, then green, then blue values, row-major
        write_pickle(folder / f"data_batch_{i + 1}",
                     {"data": train[2 * i: 2 * i + 2].reshape(2, 3072), "labels": train_y[2 * i: 2 * i + 2]})
    write_pickle(folder / "test_batch", {"data": test.reshape(3, 3072), "labels": test_y})
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})
    return train, test, train_y, test_y


def assert_cifar10_round_trip(d: DatasetSplits, written: tuple) -> None:
    train, test, train_y, test_y = written
    assert_images_and_labels(d, (3, 32, 32), 10, 3)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == train_y and d.test_y.tolist() == test_y
    assert d.class_names == CIFAR10_NAMES


def write_svhn(root: Path) -> tuple[np.ndarray, np.ndarray]:
    train, test = nchw_uint8(5, 32), nchw_uint8(3, 32)
    labels = {"train": [10, 1, 2, 9, 10], "test": [3, 10, 5]}  # SVHN's label 10 is the digit 0
    for split, images in (("train", train), ("test", test)):
        # The .mat files hold X as (height, width, channel, N) and y as (N, 1).
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0),
                                                       "y": np.array(labels[split], np.uint8)[:, None]})
    return train, test


def write_stl10(root: Path, unlabeled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "stl10_binary"
    folder.mkdir()
    train, test = nchw_uint8(3, 96), nchw_uint8(2, 96)
    # Each image is stored channel by channel, column-major (the files come from MATLAB); labels are 1..10.
    for split, images, labels in (("train", train, [1, 10, 4]), ("test", test, [7, 2])):
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes(bytes(labels))
    if unlabeled:
        (folder / "unlabeled_X.bin").touch()
    return train, test


def dataset_suite(write_suite, name: str, verify: bool | None = None) -> Path:
    """The tiny suite on dataset ``name`` (and ``verify: ...`` when given)."""
    entry = f"name: {name}\n" + ("" if verify is None else f"    verify: {str(verify).lower()}\n")
    return write_suite(TINY_SUITE.replace("name: digits\n", entry, 1))
