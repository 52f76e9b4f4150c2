"""Bi-model decision-mismatch detector (Monteiro et al. 2019, Sec. II-III).

Two structurally different classifiers (MNIST: ``monteiro-cnn`` and ``monteiro-mlp``; CIFAR-10:
``vgg16`` and ``resnet50``) are trained independently on clean data; a binary scikit-learn classifier
(the paper: an RBF SVM) reads the concatenation of their softmax outputs and tells clean inputs
(label 0) from attacks (label 1).

The two classifiers are ordinary ``undefended`` defenses built through the registry (as the
ensemble builds its members), each from its own seed, and are the checkpoint (``modules()``).
The model being guarded is ``model_a``: it is ``deployed()``. White-box attack surfaces are
``deployed`` (= ``model_a``), ``model_a`` and ``model_b``.

The binary detector is trained separately, on detector data built by
``bench.detection.data.build_detector_data`` (clean and attacked images, attacked on one randomly chosen
model each): ``fit_detector(x, is_adv)``, then ``detector()``; ``bench.detection.baselines.MismatchDetector``
wraps both as an ART ``EvasionDetector``; ``bench.detection.adaptive.guarded_classifier`` folds the detector
into model_a as an extra "rejected" class. The fitted scikit-learn detector is not part of the torch
checkpoint: the harness's detect and adaptive tasks refit it from the stored detector data (seeded,
seconds), so a checkpoint never holds a pickle.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import DatasetSplits
from bench.defense import ClassifierDefense, DetectorDefense
from bench.models import InputSpec
from bench.registry import UnknownName, defenses


@defenses.register("bimodel-mismatch", version="1")
class BiModelMismatch(DetectorDefense):
    """Detector: a binary classifier on the concatenated softmax outputs of two different models."""

    forward_passes = 2  # both models score every input

    def __init__(self, *, model_a: str = "monteiro-cnn", model_b: str = "monteiro-mlp",
                 epochs: int = 10, batch_size: int = 64, lr: float = 0.01,
                 optimizer: Literal["adam", "sgd"] = "sgd", weight_decay: float = 0.0,
                 lr_schedule: Literal["constant", "cosine"] = "constant", crop_flip: bool = False,
                 classifier: str = "svc", classifier_params: dict[str, Any] | None = None):
        self.arch_names = (model_a, model_b)
        # Both models train alike (the paper's MNIST: SGD, lr 0.01, batch 64, 10 epochs).
        self.training_params = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                    weight_decay=weight_decay, lr_schedule=lr_schedule, crop_flip=crop_flip)
        self.classifier_name = classifier
        self.classifier_params = dict(classifier_params or {})
        # Fail at suite validation, not mid-run: bad architectures, training or classifier parameters.
        for arch in self.arch_names:
            self._build_model(arch)
        self.make_classifier()
        self.model_defenses: list[ClassifierDefense] = []  # built by setup
        self._detector = None  # fitted by fit_detector

    def _build_model(self, arch: str) -> ClassifierDefense:
        try:
            return defenses.get("undefended").build(arch=arch, **self.training_params)
        except (ValueError, TypeError, UnknownName) as e:
            raise ValueError(f"bimodel-mismatch model {arch!r}: {e}") from e

    @staticmethod
    def _model_seeds(seed: int) -> list[int]:
        return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)]

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        self.spec, self.device = spec, device
        self.model_defenses = []
        for arch, model_seed in zip(self.arch_names, self._model_seeds(seed)):
            member = self._build_model(arch)
            member.setup(spec, seed=model_seed, device=device)
            self.model_defenses.append(member)
        self._detector = None

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        """Train both classifiers on clean data (the binary detector is fitted by ``fit_detector``)."""
        for member, model_seed in zip(self.model_defenses, self._model_seeds(seed)):
            member.fit(data, seed=model_seed, progress=progress)

    # -- what the harness uses

    def models(self) -> tuple[nn.Module, nn.Module]:
        """(model_a, model_b), in eval mode."""
        a, b = (member.deployed().eval() for member in self.model_defenses)
        return a, b

    def modules(self) -> dict[str, nn.Module]:
        a, b = self.models()
        return {"model_a": a, "model_b": b}

    def deployed(self) -> nn.Module:
        return self.models()[0]

    def surface_names(self) -> list[str]:
        return ["deployed", "model_a", "model_b"]

    def surfaces(self) -> dict[str, nn.Module]:
        a, b = self.models()
        return {"deployed": a, "model_a": a, "model_b": b}

    # -- the detector

    @torch.no_grad()
    def features(self, x: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Concatenated softmax outputs of model_a and model_b: (N, 2 * num_classes) float64."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
        models = self.models()
        chunks = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(self.device)
            chunks.append(torch.cat([F.softmax(m(xb), dim=1) for m in models], dim=1).cpu())
        if not chunks:
            return np.zeros((0, 2 * self.spec.num_classes))
        return torch.cat(chunks).double().numpy()

    def make_classifier(self, seed: int | None = 0):
        """A fresh, unfitted binary classifier as configured (``classifier``, ``classifier_params``)."""
        from bench.detection.classifiers import make_classifier  # scikit-learn: only when a detector is wanted

        return make_classifier(self.classifier_name, self.classifier_params, seed=seed)

    def fit_detector(self, x: torch.Tensor | np.ndarray, is_adv: np.ndarray, *, seed: int = 0) -> None:
        """Fit the binary detector on the features of ``x`` with labels ``is_adv`` (1 = attack)."""
        labels = np.asarray(is_adv).astype(int).reshape(-1)
        if len(labels) != len(x):
            raise ValueError(f"got {len(x)} images but {len(labels)} labels")
        if len(np.unique(labels)) != 2:
            raise ValueError("detector training data needs both clean (0) and adversarial (1) examples")
        detector = self.make_classifier(seed)
        detector.fit(self.features(x), labels)
        self._detector = detector

    def detector(self):
        """The fitted scikit-learn binary classifier."""
        if self._detector is None:
            raise RuntimeError("the binary detector is not fitted: call fit_detector(x, is_adv) first")
        return self._detector
