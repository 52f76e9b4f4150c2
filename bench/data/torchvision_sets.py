"""The datasets torchvision reads from --data-dir (and fetches with --download): MNIST, Fashion-MNIST
(first from Debian's package), CIFAR-10, CIFAR-100, SVHN and STL-10."""

from __future__ import annotations

import pickle
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable
from urllib.error import URLError

from torchvision import datasets as tvd

from ..errors import UserError
from ..registry import datasets
from .checksums import _files_check, _unverified
from .formats import (MNIST_FILES, _cifar_structure, _labels, _mnist_structure, _read_idx_gz, _stl10_structure,
                      _svhn_structure, _unit_images)
from .splits import DIGIT_NAMES, DataContext, DatasetSplits

# Where Debian's ``dataset-fashion-mnist`` package puts the gzipped idx files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


# ---- sizes known without loading (registry meta ``sizes``) ---------------------------------------

def _official_sizes(train: int, test: int) -> Callable[[dict], tuple[int, int]]:
    """A torchvision set's split sizes: those of its official files (a ``verify: false`` copy may differ,
    so validation does not compare sizes for it)."""
    return lambda params: (train, test)


# ---- Fashion-MNIST's files: Debian's package if installed, else torchvision's ---------------------

_fashion_torchvision_check = _files_check(
    "FashionMNIST/raw", MNIST_FILES, "~30 MB", _mnist_structure,
    alternative="; or install the Debian package dataset-fashion-mnist")


def _fashion_mnist_check(ctx: DataContext) -> str | None:
    debian = _debian_fashion_mnist()
    if debian is None:
        return _fashion_torchvision_check(ctx)
    problems = _mnist_structure(debian)
    return f"{'; '.join(problems)} (reinstall the Debian package dataset-fashion-mnist)" if problems else None


_fashion_mnist_check.missing = lambda ctx: (  # type: ignore[attr-defined]
    _debian_fashion_mnist() is None and _fashion_torchvision_check.missing(ctx))
_fashion_mnist_check.size = _fashion_torchvision_check.size  # type: ignore[attr-defined]


def _debian_fashion_mnist() -> dict[str, Path] | None:
    """The Debian package's files by idx name, if all four are installed."""
    paths = {f: DEBIAN_FASHION_MNIST / f"{f}.gz" for f in MNIST_FILES}
    return paths if all(p.is_file() for p in paths.values()) else None


# ---- datasets on disk ----------------------------------------------------------------------------

def _torchvision_pair(name: str, cls: type, ctx: DataContext, *splits: dict[str, Any]) -> tuple[Any, Any]:
    """``cls(data_dir, download=..., **split)`` for the train and the test split (``splits``), without
    torchvision's checksums if ``ctx.verify`` is off; torchvision's errors (corrupt files, a failed
    download) as UserError."""
    if not ctx.verify:
        cls = _unverified(cls)
    split = splits[0]
    try:
        out = []
        for split in splits:
            out.append(cls(ctx.data_dir, download=ctx.download, **split))
        return out[0], out[1]
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, HTTPException) as e:
        raise UserError(_torchvision_failure(name, cls, split, ctx, e)) from None


def _torchvision_failure(name: str, cls: type, split: dict[str, Any], ctx: DataContext, e: Exception) -> str:
    """One line on what went wrong inside torchvision: a failed download says so, with the URL and why."""
    text = " ".join(str(e).split())  # torchvision's messages can span lines (MNIST: one per mirror)
    network = (URLError, ConnectionError, TimeoutError, HTTPException)
    if ctx.download and (isinstance(e, network) or text.startswith("Error downloading")):
        if isinstance(e, network):  # CIFAR, SVHN, STL-10: one URL; URLError's reason says why (no DNS, refused...)
            url = getattr(e, "filename", None) or (cls.split_list[split["split"]][0] if hasattr(cls, "split_list")
                                                   else getattr(cls, "url", "torchvision's URL"))
            reason = e.reason if isinstance(e, URLError) and not hasattr(e, "code") else text
            text = f"could not fetch {url}: {reason}"
        # else MNIST's own message, which names each mirror it tried and what each answered
        return (f"dataset {name!r}: --download failed: {text}; check this machine's network connection, or copy "
                f"the files into {ctx.data_dir} in torchvision's layout")
    fix = "" if ctx.download else " (rerun with --download to fetch a fresh copy)"
    return f"dataset {name!r}: torchvision failed under {ctx.data_dir}: {type(e).__name__}: {text}{fix}"


@datasets.register("fashion-mnist", source=f"Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST}), "
                                           "else torchvision FashionMNIST under --data-dir",
                   check=_fashion_mnist_check, shape=(1, 28, 28), sizes=_official_sizes(60000, 10000))
def fashion_mnist(ctx: DataContext) -> DatasetSplits:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 clothing images) from Debian's package or torchvision."""
    debian = _debian_fashion_mnist()
    if debian:
        train_x, train_y, test_x, test_y = (_read_idx_gz(debian[f]) for f in MNIST_FILES)
    else:
        train, test = _torchvision_pair("fashion-mnist", tvd.FashionMNIST, ctx, {"train": True}, {"train": False})
        train_x, train_y, test_x, test_y = train.data, train.targets, test.data, test.targets
    return DatasetSplits(_unit_images(train_x[:, None]), _labels(train_y), _unit_images(test_x[:, None]),
                         _labels(test_y), 10, list(tvd.FashionMNIST.classes))


@datasets.register("mnist", source="torchvision MNIST under --data-dir",
                   check=_files_check("MNIST/raw", MNIST_FILES, "~12 MB", _mnist_structure),
                   shape=(1, 28, 28), sizes=_official_sizes(60000, 10000))
def mnist(ctx: DataContext) -> DatasetSplits:
    """MNIST (60,000 train / 10,000 test 28x28 digits) via torchvision."""
    train, test = _torchvision_pair("mnist", tvd.MNIST, ctx, {"train": True}, {"train": False})
    return DatasetSplits(_unit_images(train.data[:, None]), _labels(train.targets),
                         _unit_images(test.data[:, None]), _labels(test.targets), 10, DIGIT_NAMES)


def _cifar(name: str, cls: type, ctx: DataContext, num_classes: int) -> DatasetSplits:
    train, test = _torchvision_pair(name, cls, ctx, {"train": True}, {"train": False})
    # torchvision stores CIFAR as NHWC uint8; class names come from the meta file
    return DatasetSplits(_unit_images(train.data.transpose(0, 3, 1, 2)), _labels(train.targets),
                         _unit_images(test.data.transpose(0, 3, 1, 2)), _labels(test.targets), num_classes,
                         list(train.classes))


# ``checksums``: the torchvision class whose MD5s the files must match unless the suite says verify: false.
@datasets.register("cifar10", source="torchvision CIFAR10 under --data-dir", checksums=tvd.CIFAR10, check=_files_check(
    "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"], "~170 MB",
    _cifar_structure("labels", "batches.meta", "label_names", 10)),
    shape=(3, 32, 32), sizes=_official_sizes(50000, 10000))
def cifar10(ctx: DataContext) -> DatasetSplits:
    """CIFAR-10 (50,000 train / 10,000 test 32x32 colour images, 10 classes) via torchvision."""
    return _cifar("cifar10", tvd.CIFAR10, ctx, 10)


@datasets.register("cifar100", source="torchvision CIFAR100 under --data-dir", checksums=tvd.CIFAR100,
                   check=_files_check("cifar-100-python", ["train", "test", "meta"], "~170 MB",
                                      _cifar_structure("fine_labels", "meta", "fine_label_names", 100)),
                   shape=(3, 32, 32), sizes=_official_sizes(50000, 10000))
def cifar100(ctx: DataContext) -> DatasetSplits:
    """CIFAR-100 (50,000 train / 10,000 test 32x32 colour images, 100 fine classes) via torchvision."""
    return _cifar("cifar100", tvd.CIFAR100, ctx, 100)


@datasets.register("svhn", source="torchvision SVHN under --data-dir", checksums=tvd.SVHN,
                   check=_files_check("", ["train_32x32.mat", "test_32x32.mat"], "~245 MB", _svhn_structure),
                   shape=(3, 32, 32), sizes=_official_sizes(73257, 26032))
def svhn(ctx: DataContext) -> DatasetSplits:
    """SVHN house-number digits (73,257 train / 26,032 test 32x32 colour images) via torchvision."""
    train, test = _torchvision_pair("svhn", tvd.SVHN, ctx, {"split": "train"}, {"split": "test"})
    # torchvision already transposes the .mat's HWCN array to NCHW and maps label 10 to 0
    return DatasetSplits(_unit_images(train.data), _labels(train.labels), _unit_images(test.data),
                         _labels(test.labels), 10, DIGIT_NAMES)


# torchvision's STL10 integrity check wants the unlabeled images too, even for the labeled splits.
@datasets.register("stl10", source="torchvision STL10 under --data-dir", checksums=tvd.STL10, check=_files_check(
    "stl10_binary", ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"], "~2.6 GB",
    _stl10_structure), shape=(3, 96, 96), sizes=_official_sizes(5000, 8000))
def stl10(ctx: DataContext) -> DatasetSplits:
    """STL-10 labeled splits (5,000 train / 8,000 test 96x96 colour images, 10 classes) via torchvision."""
    train, test = _torchvision_pair("stl10", tvd.STL10, ctx, {"split": "train"}, {"split": "test"})
    # torchvision returns NCHW already; class_names.txt is optional, the order is fixed by the dataset
    return DatasetSplits(_unit_images(train.data), _labels(train.labels), _unit_images(test.data),
                         _labels(test.labels), 10, list(getattr(train, "classes", STL10_CLASSES)))
