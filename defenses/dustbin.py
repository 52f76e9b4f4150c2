"""A CNN with a dustbin (reject) class trained on out-distribution data (Abbasi et al. 2018, "Towards
Dependable Deep CNNs with Out-distribution Learning", ../shared/papers/dustbin-out-distribution-abbasi2018.txt).

The classifier has K + 1 outputs; the extra one, the dustbin (label K), is trained on two sources
appended to the in-distribution training set (Sec. V):

* natural out-distribution images: any registered dataset (``out_distribution``, its ``out_params``),
  optionally without some classes (``out_exclude_classes``; for CIFAR-100 also superclass names, e.g.
  ``bench.data.CIFAR10_OVERLAP_SUPERCLASSES``), a random subset of its *training* split of
  ``out_fraction`` x the in-distribution training set (paper: 10,000 NotMNIST for 50,000 MNIST = 0.2;
  15,000 CIFAR-100 for 50,000 CIFAR-10 = 0.3); its test split is what a suite scores rejection on
  (``out_distribution:`` on the dataset entry);
* interpolated in-distribution images: of each class a random ``interpolated_fraction`` of its images
  (paper: 1,500 of 5,000 = 0.3), each mixed with its nearest neighbour *from another class* in the
  penultimate-layer feature space of a naive CNN trained on the in-distribution data,
  I = alpha * I_source + (1 - alpha) * I_neighbour with alpha = 0.5 (Eq. 5, "Pair selection").

With the paper's fractions the dustbin adds 50% to the training set, as the paper does. The naive CNN
is the suite's own where ``features_from`` names it (e.g. ``features_from: naive``: trained once, for its
cells and for the pairs); otherwise one is trained inside ``fit`` (same architecture and training settings,
``feature_epochs`` epochs, the seed of the suite's ``undefended`` entry of that architecture); it only picks
pairs and is not part of the checkpoint. ``interpolate: false`` trains without interpolated images (Table I's
"<MNIST, NotMNIST>" column).

Surfaces: ``deployed`` (the K + 1 logits; an untargeted attack on it stops as soon as the image lands
in the dustbin) and ``reject-aware`` (the white-box adaptive attack: success means the best wrong
*non-dustbin* class beats both the true class and the dustbin; plain PyTorch backends only, like the
detector-aware attack of ``bench.detection.adaptive``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.data import DataContext, DatasetSplits, load_out_distribution
from bench.defense import ClassifierDefense
from bench.errors import TaskFailed
from bench.models import InputSpec, build_architecture
from bench.registry import datasets, defenses
from bench.training import train_classifier


# --------------------------------------------------------------------------- interpolated samples


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, *, device: torch.device | str = "cpu",
                         batch_size: int = 512) -> torch.Tensor:
    """The input of ``model``'s last ``nn.Linear`` (its penultimate layer) for images ``x``: (N, F) on the CPU."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer whose input could serve as features")
    captured: list[torch.Tensor] = []
    hook = linears[-1].register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].flatten(1).cpu()))
    was_training = model.training
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured) if captured else torch.zeros(0, linears[-1].in_features)


def interpolation_pairs(features: np.ndarray, labels: np.ndarray, fraction: float, *,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, neighbour) index pairs: of each class a seeded random ``fraction`` of its examples (at least
    one where ``fraction`` > 0), each with its nearest neighbour (Euclidean, in ``features``) among the
    examples of every *other* class (Abbasi et al. Sec. V, "Pair selection"), found by scikit-learn."""
    from sklearn.neighbors import NearestNeighbors

    features, labels = np.asarray(features, dtype=np.float32), np.asarray(labels)
    rng = np.random.default_rng(seed)
    sources, neighbours = [], []
    for c in np.unique(labels):
        mine, others = np.flatnonzero(labels == c), np.flatnonzero(labels != c)
        count = min(len(mine), max(1, round(fraction * len(mine)))) if fraction > 0 else 0
        if count == 0 or len(others) == 0:
            continue
        chosen = np.sort(rng.choice(mine, size=count, replace=False))
        index = NearestNeighbors(n_neighbors=1).fit(features[others])
        _, nearest = index.kneighbors(features[chosen])
        sources.append(chosen)
        neighbours.append(others[nearest[:, 0]])
    if not sources:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(sources).astype(np.int64), np.concatenate(neighbours).astype(np.int64)


def interpolate(source: torch.Tensor, neighbour: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * source + (1 - alpha) * neighbour (Abbasi et al. Eq. 5)."""
    return alpha * source + (1 - alpha) * neighbour


# --------------------------------------------------------------------------- the white-box adaptive surface


class RejectAwareSurface(nn.Module):
    """The dustbin CNN as the adaptive attacker sees it: to succeed, the best wrong class that is not the
    dustbin must beat both the true class and the dustbin (the C&W trick of folding a detector into the
    classes, Carlini & Wagner 2017, applied to a reject class).

    ``forward`` is the model's K + 1 logits (what is scored); ``attack_logits`` (K columns, the true column
    raised to the dustbin logit where that is higher) and ``attack_loss`` (their margin) are what the plain
    PyTorch attack backends use (``bench.attacks.backends``), as for ``GuardedClassifier``.
    """

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model, self.num_classes = model, num_classes
        self.reject_class = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def attack_logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, K): the K class logits with column y replaced by max(Z_y, Z_dustbin): argmax != y means a wrong,
        non-rejected decision."""
        logits = self.model(x)
        z, dustbin = logits[:, :self.num_classes], logits[:, self.num_classes]
        idx = labels.reshape(-1, 1)
        return z.scatter(1, idx, torch.maximum(z.gather(1, idx), dustbin[:, None]))

    def attack_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over the batch: the best wrong non-dustbin logit minus max(true, dustbin); the gradient
        attacks ascend it (each image keeps its first iterate that succeeds)."""
        z = self.attack_logits(x, labels)
        idx = labels.reshape(-1, 1)
        other = z.scatter(1, idx, float("-inf")).amax(1)
        return (other - z.gather(1, idx).squeeze(1)).sum()


# --------------------------------------------------------------------------- the defense


@defenses.register("dustbin", version="1")
class Dustbin(ClassifierDefense):
    """K+1-class CNN whose dustbin class is trained on out-distribution and interpolated images (Abbasi et al. 2018)."""

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """The training set grows by the dustbin class's images; a naive model is trained for the interpolation
        unless ``features_from`` names one."""
        interpolate = bool(params.get("interpolate", True))
        factor = 1 + float(params.get("out_fraction") or 0) + (
            float(params.get("interpolated_fraction") or 0) if interpolate else 0)
        if interpolate and not params.get("features_from"):
            epochs = float(params.get("epochs") or 1)
            factor += float(params.get("feature_epochs") or epochs) / epochs
        return factor

    has_reject_class = True
    defense_references = ("features_from",)
    # Where ``fit`` finds the out-distribution dataset's files (``Defense.data_context``, None there): the train
    # step sets the run's (--data-dir); this default serves a dustbin fitted outside a run.
    data_context: DataContext = DataContext(Path("data"))

    def __init__(self, *, out_distribution: str = "fashion-mnist", out_params: dict[str, Any] | None = None,
                 out_exclude_classes: list[str] | None = None, out_fraction: float = 0.2,
                 interpolate: bool = True, interpolated_fraction: float = 0.3, alpha: float = 0.5,
                 feature_epochs: int | None = None, features_from: str | None = None, **classifier_params):
        super().__init__(**classifier_params)
        datasets.get(out_distribution).validate(out_params)  # an unknown name or parameter fails at validation
        if not 0 <= out_fraction <= 10:
            raise ValueError(f"out_fraction must be in [0, 10] (out-distribution images per in-distribution "
                             f"training image), got {out_fraction}")
        if not 0 < interpolated_fraction <= 1:
            raise ValueError(f"interpolated_fraction must be in (0, 1] (the share of each class used as "
                             f"interpolation sources), got {interpolated_fraction}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if feature_epochs is not None and feature_epochs < 1:
            raise ValueError(f"feature_epochs must be >= 1, got {feature_epochs}")
        if features_from is not None and feature_epochs is not None:
            raise ValueError("feature_epochs trains the naive CNN inside fit; with features_from (the suite's naive "
                             "CNN) none is trained: set one of them")
        if out_fraction == 0 and not interpolate:
            raise ValueError("the dustbin needs training images: set out_fraction > 0 or interpolate: true")
        self.out_distribution, self.out_params = out_distribution, dict(out_params or {})
        self.out_exclude_classes = list(out_exclude_classes or [])
        self.out_fraction, self.interpolate = out_fraction, interpolate
        self.interpolated_fraction, self.alpha = interpolated_fraction, alpha
        self.feature_epochs, self.features_from = feature_epochs, features_from
        self.references: dict = {}  # features_from's trained defense, handed over by the train step
        self.dustbin_counts: dict[str, int] = {}  # what ``fit`` added, by source (for inspection and tests)

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        super().setup(dataclasses.replace(spec, num_classes=spec.num_classes + 1), seed=seed, device=device)
        self.spec = spec  # K in-distribution classes; the model has K + 1 outputs

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Suite validation: the out-distribution images must have the in-distribution images' shape."""
        theirs = datasets.get(self.out_distribution).meta.get("shape")
        if theirs is not None and tuple(theirs) != tuple(shape):
            raise ValueError(f"out_distribution {self.out_distribution!r} has {'x'.join(map(str, theirs))} images, "
                             f"this dataset {'x'.join(map(str, shape))}")

    @property
    def reject_class(self) -> int:
        return self.spec.num_classes

    def surfaces(self) -> dict[str, nn.Module]:
        return {"deployed": self.model, "reject-aware": RejectAwareSurface(self.model, self.spec.num_classes)}

    def surface_names(self) -> list[str]:
        return ["deployed", "reject-aware"]

    def loss_surface_names(self) -> list[str]:
        return ["reject-aware"]

    # -- the dustbin's training images

    def out_distribution_images(self, data: DatasetSplits, generator: torch.Generator) -> torch.Tensor:
        """A random ``out_fraction`` share (of the in-distribution training set's size) of the out-distribution
        set's training split."""
        count = round(self.out_fraction * len(data.train_y))
        if count == 0:
            return data.train_x[:0]
        out = load_out_distribution(self.out_distribution, self.out_params, self.out_exclude_classes,
                                    self.data_context)
        if out.train_x.shape[1:] != data.train_x.shape[1:]:
            raise TaskFailed(f"dustbin: out_distribution {self.out_distribution!r} has "
                             f"{'x'.join(map(str, out.train_x.shape[1:]))} images, the in-distribution data "
                             f"{'x'.join(map(str, data.train_x.shape[1:]))}")
        if count > len(out.train_y):
            raise TaskFailed(f"dustbin: out_fraction {self.out_fraction} asks for {count} out-distribution images; "
                             f"the training split of {self.out_distribution!r} has {len(out.train_y)}")
        return out.train_x[torch.randperm(len(out.train_y), generator=generator)[:count]]

    def naive_features(self, data: DatasetSplits, *, seed: int, progress: bool) -> torch.Tensor:
        """Penultimate-layer features of the training images under a naive K-class CNN: the suite's
        (``features_from``, trained once for its own cells too), else one trained here."""
        if self.features_from is not None:
            naive = getattr(self.references.get("features_from"), "model", None)
            if naive is None:
                raise TaskFailed(f"dustbin: features_from {self.features_from!r} is not a trained classifier "
                                 "(a defense with one model, e.g. undefended)")
            return penultimate_features(naive, data.train_x, device=self.device)
        torch.manual_seed(seed)  # the same initialisation an undefended model of this architecture gets
        arch = self.model_arch()
        naive = build_architecture(arch, self.spec, self.arch_params).to(self.device)
        config = dataclasses.replace(self.train_config, epochs=self.feature_epochs or self.train_config.epochs)
        train_classifier(naive, data.train_x, data.train_y, config, seed=seed, device=self.device,
                         transform=self.augment, progress=progress, desc=f"{self.label or 'dustbin'}: naive CNN")
        return penultimate_features(naive, data.train_x, device=self.device)

    def model_arch(self) -> str:
        from bench.defense import default_architecture

        return default_architecture(self.spec) if self.arch == "auto" else self.arch

    def interpolated_images(self, data: DatasetSplits, *, seed: int, progress: bool) -> torch.Tensor:
        features = self.naive_features(data, seed=seed, progress=progress)
        source, neighbour = interpolation_pairs(features.numpy(), data.train_y.numpy(), self.interpolated_fraction,
                                                seed=seed)
        return interpolate(data.train_x[torch.from_numpy(source)], data.train_x[torch.from_numpy(neighbour)],
                           self.alpha)

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        generator = torch.Generator().manual_seed(seed)
        out = self.out_distribution_images(data, generator)
        mixed = self.interpolated_images(data, seed=seed, progress=progress) if self.interpolate \
            else data.train_x[:0]
        self.dustbin_counts = {"out_distribution": len(out), "interpolated": len(mixed)}
        dustbin = torch.cat([out, mixed])
        x = torch.cat([data.train_x, dustbin])
        y = torch.cat([data.train_y, torch.full((len(dustbin),), self.reject_class, dtype=torch.int64)])
        train_classifier(self.model, x, y, self.train_config, seed=seed, device=self.device,
                         transform=self.augment, loss_fn=self.training_loss, progress=progress,
                         desc=self.label or "dustbin")
