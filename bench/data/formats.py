"""Readers of the real file formats: conversions to ``DatasetSplits``' tensors, the gzipped idx reader of
the Debian Fashion-MNIST files, and the cheap structure checks (headers and sizes, not the images) of
MNIST's idx files, CIFAR's pickles, SVHN's .mat files and STL-10's raw files that
``checksums._files_check`` runs."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import UserError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


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


# ---- structure checks (what ``checksums._files_check``'s ``structure`` runs) ----------------------

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
