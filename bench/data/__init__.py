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

The package, by job (importing it registers every built-in dataset: ``bench.registry.datasets`` imports
``bench.data``):

* ``splits``: ``DataContext``, ``DatasetSplits`` and the seeded subset ``load_dataset`` takes;
* ``loading``: ``check_available``, ``has_checksums``, ``load_dataset``, ``clear_cache``;
* ``formats``: readers and structure checks of the real file formats (idx, CIFAR pickles, SVHN .mat, STL-10);
* ``checksums``: the missing/damaged-file checks, torchvision's MD5s, what ``verify: false`` loads with;
* ``embedded``, ``torchvision_sets``, ``notmnist``: the registered datasets;
* ``out_distribution``: a registered dataset without some of its classes.
"""

from __future__ import annotations

from .embedded import digits, mnist5k
from .formats import MNIST_FILES, STL10_IMAGE_BYTES
from .loading import check_available, clear_cache, has_checksums, load_dataset
from .notmnist import NOTMNIST_LETTERS, notmnist, read_notmnist_folder
from .out_distribution import (CIFAR10_OVERLAP_SUPERCLASSES, CIFAR100_SUPERCLASSES, excluded_labels,
                               load_out_distribution, without_classes)
from .splits import DIGIT_NAMES, DataContext, DatasetSplits
from .torchvision_sets import (DEBIAN_FASHION_MNIST, STL10_CLASSES, cifar10, cifar100, fashion_mnist, mnist, stl10,
                               svhn)

__all__ = ["CIFAR100_SUPERCLASSES", "CIFAR10_OVERLAP_SUPERCLASSES", "DEBIAN_FASHION_MNIST", "DIGIT_NAMES",
           "DataContext", "DatasetSplits", "MNIST_FILES", "NOTMNIST_LETTERS", "STL10_CLASSES", "STL10_IMAGE_BYTES",
           "check_available", "cifar10", "cifar100", "clear_cache", "digits", "excluded_labels", "fashion_mnist",
           "has_checksums", "load_dataset", "load_out_distribution", "mnist", "mnist5k", "notmnist",
           "read_notmnist_folder", "stl10", "svhn", "without_classes"]
