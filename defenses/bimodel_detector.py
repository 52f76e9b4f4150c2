"""Bi-model decision-mismatch detector (Monteiro et al. 2019, Sec. II-III).

Two structurally different classifiers (MNIST: ``monteiro-cnn`` and ``monteiro-mlp``; CIFAR-10:
``vgg16`` and ``resnet50``) are trained independently on clean data; a binary scikit-learn classifier
(the paper: an RBF SVM) reads the concatenation of their softmax outputs and tells clean inputs
(label 0) from attacks (label 1).

The two classifiers are ordinary ``undefended`` defenses built through the registry (as the
ensemble builds its members), each from its own seed, and are the checkpoint (``modules()``).
Either may instead be a model you already have: ``model_a: {pretrained: {factory: ..., weights: ...}}``
takes the ``pretrained`` defense's parameters (defenses/pretrained.py); it is loaded, not trained, and its
weights file's SHA-256 enters the task key (``resolve_params``), as for ``pretrained`` itself.
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
from bench.defense import Defense, DetectorDefense
from bench.models import InputSpec
from bench.registry import ClassifierName, defenses
from defenses.pretrained import Pretrained, nested_defense


@defenses.register("bimodel-mismatch", version="1")
class BiModelMismatch(DetectorDefense):
    """Detector: a binary classifier on the concatenated softmax outputs of two different models."""

    forward_passes = 2  # both models score every input

    def __init__(self, *, model_a: str | dict[str, Any] = "monteiro-cnn",
                 model_b: str | dict[str, Any] = "monteiro-mlp",
                 epochs: int = 10, batch_size: int = 64, lr: float = 0.01,
                 optimizer: Literal["adam", "sgd"] = "sgd", weight_decay: float = 0.0,
                 lr_schedule: Literal["constant", "cosine"] = "constant", crop_flip: bool = False,
                 classifier: ClassifierName = "svc", classifier_params: dict[str, Any] | None = None):
        # Each model: an architecture name (trained here) or {pretrained: {...}} (loaded: defenses/pretrained.py).
        self.model_specs = {"model_a": model_a, "model_b": model_b}
        for key, spec in self.model_specs.items():
            if isinstance(spec, dict) and (set(spec) != {"pretrained"} or not isinstance(spec["pretrained"], dict)):
                raise ValueError(f"{key}: an architecture name, or {{pretrained: {{factory: ..., weights: ...}}}} "
                                 f"for a model you already have; got {spec}")
        # Both models train alike (the paper's MNIST: SGD, lr 0.01, batch 64, 10 epochs).
        self.training_params = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                    weight_decay=weight_decay, lr_schedule=lr_schedule, crop_flip=crop_flip)
        self.classifier_name = classifier
        self.classifier_params = dict(classifier_params or {})
        # Fail at suite validation, not mid-run: bad architectures, pretrained, training or classifier parameters.
        for key in self.model_specs:
            self._build_model(key)
        self.make_classifier()
        self.model_defenses: list[Defense] = []  # built by setup
        self._detector = None  # fitted by fit_detector

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters a task key hashes (``bench.plan``): a pretrained model's weights file's SHA-256
        pinned in beside it (``Pretrained.resolve_params``), so a changed file re-runs the detector."""
        return {**params, **{key: {"pretrained": Pretrained.resolve_params(dict(params[key]["pretrained"]))}
                             for key in ("model_a", "model_b") if isinstance(params.get(key), dict)
                             and isinstance(params[key].get("pretrained"), dict)}}

    def _build_model(self, key: str) -> Defense:
        spec = self.model_specs[key]
        try:
            if isinstance(spec, dict):
                return nested_defense("pretrained", spec["pretrained"])
            return nested_defense("undefended", {"arch": spec, **self.training_params})
        except ValueError as e:
            what = f"{key}.pretrained" if isinstance(spec, dict) else f"bimodel-mismatch model {spec!r}"
            raise ValueError(f"{what}: {e}") from e

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """A pretrained model must take the dataset's images (``Pretrained.check_input_shape``); an
        architecture the harness trains is built for them."""
        for key, spec in self.model_specs.items():
            if isinstance(spec, dict):
                model = self._build_model(key)
                try:
                    model.check_input_shape(shape)
                except ValueError as e:
                    raise ValueError(f"{key}.pretrained: {e}") from e

    @staticmethod
    def _model_seeds(seed: int) -> list[int]:
        return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)]

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        self.spec, self.device = spec, device
        self.model_defenses = []
        for key, model_seed in zip(self.model_specs, self._model_seeds(seed)):
            member = self._build_model(key)
            member.setup(spec, seed=model_seed, device=device)
            self.model_defenses.append(member)
        self._detector = None

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        """Train both classifiers on clean data, or load a pretrained one (the binary detector is fitted by
        ``fit_detector``)."""
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
