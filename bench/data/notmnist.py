"""NotMNIST: letters A-J from a folder of PNGs per letter that the user unpacks under --data-dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..registry import datasets
from .embedded import _split_embedded
from .splits import DataContext, DatasetSplits

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
