"""What every dataset returns and is loaded with: ``DataContext``, ``DatasetSplits``, and the seeded
subset of a split that ``load_dataset`` takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..models import InputSpec

DIGIT_NAMES = [str(d) for d in range(10)]


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


def _subset(name: str, split: str, x: torch.Tensor, y: torch.Tensor, size: int | None,
            seed: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        return x, y
    if not 1 <= size <= len(y):
        raise UserError(f"dataset {name!r}: {split}_size={size}, but the {split} split has {len(y)} examples")
    index = torch.from_numpy(np.random.default_rng(seed).permutation(len(y))[:size])
    return x[index], y[index]
