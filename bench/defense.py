"""The defense interface: what every defense offers the harness (docs/architecture.md, "Defenses").

Lifecycle as the harness drives it:

1. a registry factory builds the defense from a suite's parameters (cheap, no tensors);
2. ``setup(spec, seed=..., device=...)`` builds its modules for a dataset's input shape;
3. either ``fit(data, ...)`` trains it, or ``load_state_dict`` restores a checkpoint;
4. attacks use ``surface(name)``; scoring uses ``deployed()``.

Randomness a defense uses at test time must not depend on ``module.training``:
attack libraries put models into eval mode.

Three kinds: ``ClassifierDefense`` (one trained classifier; subclasses change its training),
``Defense`` (anything else: ensembles, ...), and ``DetectorDefense`` (models plus a binary
adversarial-example detector on their features, which the detector task steps are typed against).

Optional hooks, each declared on ``Defense`` with the default that means "not used", so the harness reads
them as plain attributes (never by ``hasattr``/``getattr``):

* flags: ``stochastic``, ``forward_passes``, ``has_reject_class``, ``is_detector``, ``is_smoothed`` (with
  ``smoothed_base``), ``gradient_surface``, ``defense_references``;
* ``data_context``: set by the train step before ``fit`` (a defense that loads a second dataset reads it);
* ``resolve_params(params)`` (classmethod): the parameters a task key hashes (the plan), e.g. a weights
  file's SHA-256 pinned in;
* ``training_factor(params)`` (classmethod): training passes relative to plain training (the cost model);
* ``check_input_shape(shape)``: suite validation, raising ValueError where the defense cannot take a
  dataset's images.

A registry factory may be a function as well as a class (``bench.registry``): what the harness reads of a
factory before building it goes through ``defense_class_flag``.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import to_art, to_foolbox
from .data import DataContext, DatasetSplits
from .models import InputSpec, build_architecture
from .registry import UnknownName, architectures
from .training import TrainConfig, random_crop_flip, train_classifier


class Defense:
    """Base class. Subclasses implement ``setup``, ``fit`` and ``modules``."""

    # Flags the harness reads.
    stochastic: ClassVar[bool] = False       # predictions vary between calls (test-time noise, sampling)
    # The deployed model has an extra "reject" output (K) that counts as a rejection (a class default a defense
    # may set per instance: randomized smoothing's ``abstain``).
    has_reject_class: bool = False
    is_detector: ClassVar[bool] = False
    # A smoothed classifier (randomized smoothing): ``smoothed_base`` gives its base classifier and noise level,
    # which a smoothing certificate (bench.certify) reads.
    is_smoothed: ClassVar[bool] = False
    # The surface whose input gradients stand for the deployed model's in soundness check 7 (the probe): a
    # deployed model that is not differentiable by design (randomized smoothing's vote count) names the surface
    # its gradient attacks use.
    gradient_surface: ClassVar[str] = "deployed"
    forward_passes: int = 1                   # forward passes per prediction (may be set per instance)
    # Parameters whose value is the label of another defense of the suite whose trained model ``fit`` reads
    # (e.g. the dustbin's ``features_from``): the plan makes that train task an input of this one, and the
    # train step hands the trained defenses over in ``references`` (parameter -> Defense) before ``fit``.
    defense_references: ClassVar[tuple[str, ...]] = ()
    label: str | None = None                  # the suite's label for it (progress bars), set by the runner
    # Where the run's dataset files are (``--data-dir``, ``--download``): the train step sets it before ``fit``,
    # for a defense that loads a second dataset (the dustbin's out-distribution set); None until then.
    data_context: DataContext | None = None

    spec: InputSpec
    device: torch.device

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters a task key hashes, given the suite's validated ones (``bench.plan``): a defense whose
        output depends on a file its parameters name pins the file's content in (``pretrained``: its SHA-256),
        so a changed file changes the keys. Default: ``params`` themselves, unchanged."""
        return params

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """Training passes relative to plain training (epochs × images × a forward and backward through the model)
        that ``fit`` with these validated ``params`` makes: what the cost model prices (bench.runner.cost). Default
        1: plain training."""
        return 1.0

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Suite validation, on the built but untrained defense, once per dataset (``shape``: C, H, W): raise
        ValueError (one line) where it cannot take that dataset's images (a user's network, a second
        dataset of another shape). Default: every shape is fine."""
        return None

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        raise NotImplementedError

    def smoothed_base(self) -> tuple[nn.Module, float]:
        """A smoothed classifier's base classifier (K logits) and the std σ of its Gaussian noise (``is_smoothed``
        defenses only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a smoothed classifier")

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """The trainable parts, by name: what a checkpoint holds."""
        raise NotImplementedError

    def deployed(self) -> nn.Module:
        """The model exactly as the defense decides at test time: [0,1] NCHW images -> scores."""
        raise NotImplementedError

    def member_models(self) -> list[nn.Module]:
        """The members whose votes make the prediction, for diversity metrics; empty for single models."""
        return []

    def surfaces(self) -> dict[str, nn.Module]:
        """Differentiable modules a white-box attacker may use, by name."""
        return {"deployed": self.deployed()}

    def surface_names(self) -> list[str]:
        """Names ``surfaces()`` will offer once set up; known before training, for suite validation."""
        return ["deployed"]

    def loss_surface_names(self) -> list[str]:
        """Surfaces whose module defines its own ``attack_loss`` (only the plain-PyTorch attack backends
        use it): known before training, so a suite pairing one with another backend fails at validation."""
        return []

    def surface(self, name: str) -> nn.Module:
        available = self.surfaces()
        if name not in available:
            raise UnknownName("attack surface", name, sorted(available))
        return available[name].eval()

    # Checkpoints: flat tensor dicts, loadable with torch.load(weights_only=True).
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{part}.{k}": v for part, m in self.modules().items() for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for part, module in self.modules().items():
            prefix = f"{part}."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            module.to(self.device).eval()

    # Adapters for the attack libraries.
    def as_art(self, surface: str = "deployed"):
        num_classes = self.spec.num_classes + (1 if self.has_reject_class else 0)
        return to_art(self.surface(surface), self.spec.shape, num_classes, self.device)

    def as_foolbox(self, surface: str = "deployed"):
        return to_foolbox(self.surface(surface), self.device)


# The hooks and flags ``defense_class_flag`` reads: what is known of a defense before it is built.
# (Not ``forward_passes``: a defense may set it per instance, from its parameters: read it on the built one.)
CLASS_HOOKS = ("stochastic", "has_reject_class", "is_detector", "is_smoothed", "gradient_surface",
               "defense_references", "resolve_params", "training_factor")


def defense_class_flag(factory: Callable[..., Any], name: str) -> Any:
    """A class-level flag or hook (``CLASS_HOOKS``) of what a defense registry factory builds, without building
    it: the class's own where the factory is a ``Defense`` subclass (every built-in one is); where it is a
    function or another callable (the registry allows them), what it carries under that name, else
    ``Defense``'s default (not stochastic, parameters unchanged, ...)."""
    if name not in CLASS_HOOKS:
        raise AttributeError(f"{name!r} is not a class-level defense hook (one of {', '.join(CLASS_HOOKS)})")
    if isinstance(factory, type) and issubclass(factory, Defense):
        return getattr(factory, name)
    return getattr(factory, name, getattr(Defense, name))


def default_architecture(spec: InputSpec) -> str:
    """The papers' nets: Strauss Table 1 for grayscale inputs, Table 3 for colour."""
    return "strauss-mnist" if spec.channels == 1 else "strauss-cifar"


class ClassifierDefense(Defense):
    """One trained classifier; subclasses change the training (augmentation, loss)."""

    def __init__(self, *, arch: str = "auto", arch_params: dict[str, Any] | None = None, epochs: int = 5,
                 batch_size: int = 128, lr: float = 1e-3, optimizer: Literal["adam", "sgd"] = "adam",
                 weight_decay: float = 0.0, lr_schedule: Literal["constant", "cosine"] = "constant",
                 crop_flip: bool = False):
        if arch != "auto":
            architectures.get(arch).validate(arch_params)  # fail at suite validation, not mid-run
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        self.arch = arch
        self.arch_params = arch_params or {}
        self.crop_flip = crop_flip
        self.train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                        weight_decay=weight_decay, lr_schedule=lr_schedule)
        self.model: nn.Module | None = None

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        self.spec, self.device = spec, device
        torch.manual_seed(seed)  # parameter initialisation
        arch = default_architecture(spec) if self.arch == "auto" else self.arch
        self.model = build_architecture(arch, spec, self.arch_params).to(device).eval()

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def deployed(self) -> nn.Module:
        return self.model

    def augment(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """Per-batch training-data transform (subclasses extend it): crop and flip if asked."""
        return (random_crop_flip(x, generator) if self.crop_flip else x), y

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective on one batch (subclasses override it): cross-entropy here."""
        return F.cross_entropy(model(x), y)

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        train_classifier(self.model, data.train_x, data.train_y, self.train_config, seed=seed,
                         device=self.device, transform=self.augment, loss_fn=self.training_loss,
                         progress=progress, desc=self.label or type(self).__name__)


class DetectorDefense(Defense):
    """A detector of adversarial examples: trained models (the checkpoint) plus a binary classifier
    on features of their outputs, fitted separately on detector data (clean = 0, attacked = 1).

    What the detector task steps (``bench.runner.detector_steps``) and the detector-aware attack
    (``bench.detection.adaptive``) use. The fitted binary classifier is not part of the checkpoint:
    the harness refits it from stored detector data (seeded), so a checkpoint never holds a pickle.
    Suites list a detector under ``detectors:``, never under ``defenses:``.
    """

    is_detector: ClassVar[bool] = True

    def models(self) -> tuple[nn.Module, ...]:
        """The trained models whose outputs the detector reads, in eval mode; the first is guarded."""
        raise NotImplementedError

    def features(self, x: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The detector's input features of images ``x``: (N, F) float64."""
        raise NotImplementedError

    def make_classifier(self, seed: int | None = 0):
        """A fresh, unfitted scikit-learn-style binary classifier (fit/predict) as configured."""
        raise NotImplementedError

    def fit_detector(self, x: torch.Tensor | np.ndarray, is_adv: np.ndarray, *, seed: int = 0) -> None:
        """Fit the binary classifier on the features of ``x`` with labels ``is_adv`` (1 = attack)."""
        raise NotImplementedError

    def detector(self):
        """The fitted binary classifier (after ``fit_detector``)."""
        raise NotImplementedError
