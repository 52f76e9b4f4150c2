"""Out-distribution sets: a registered dataset without some of its classes (CIFAR-100 without the
superclasses close to CIFAR-10's, for the dustbin defense)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import UserError
from .loading import load_dataset
from .splits import DataContext, DatasetSplits

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
