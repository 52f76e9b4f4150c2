"""The certificate methods a suite's ``certificates:`` entries name (``bench.registry.certifiers``).

A method certifies a trained defense's deployed decisions on a set of test images at several budgets of one
threat model, and says per example whether it is classified right *and* certified at each budget
(``Certified.flags``): certified accuracy, a lower bound on robust accuracy, to sit beside the best-known
upper bound of the attacks (bench.report.certified).

* ``ibp``, ``deepz``: interval bounds and DeepZ zonotopes through a deterministic network
  (``bench.certify.bounds``); exact at the network (a certificate holds for every input of the ball), with no
  Monte-Carlo error.
* ``smoothing``: randomized smoothing's CERTIFY (Cohen et al. 2019; ``bench.certify.smoothing``) on a smoothed
  classifier (``Defense.is_smoothed``): an L2 radius per example, true with probability at least 1 - alpha;
  an example is certified at ε where it is classified right and its radius is ≥ ε (Cohen et al.'s certified
  accuracy at radius ε; an abstain is never certified).

``applies_to`` says, before anything is built, whether a method can certify the defenses a registry factory
builds (the plan certifies only those; a suite that names another is an error at validation). A network the
method cannot take after all (a layer it has no rule for, too large) raises ``Unsupported``: the row records
the reason and the leaderboard shows "—".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch

from ..defense import Defense, defense_class_flag
from ..registry import certifiers
from ..training import predict
from . import Unsupported


@dataclass(frozen=True)
class Certified:
    """One certify task's outcome on its images, per example."""

    flags: dict[float, np.ndarray]  # budget -> classified right and certified at that budget (bool)
    clean_correct: np.ndarray  # classified right at the image itself (the certified decision)
    # The radius within which each example is certified *right* (smoothing: L2), 0 where it is not (abstained,
    # or certified for a wrong class): certified accuracy at any radius r is the share with radius ≥ r > 0.
    radius: np.ndarray | None = None
    abstained: np.ndarray | None = None  # a smoothed classifier's abstains


class Certifier:
    """Base class of a certificate method; its keyword-only ``__init__`` parameters are what a suite may set."""

    threat_models: ClassVar[tuple[str, ...]]  # the norms it certifies; the first is an entry's default

    def applies_to(self, factory: Callable[..., Any]) -> str | None:
        """Why this method cannot certify the defenses ``factory`` (a defense registry factory) builds; None: it
        can."""
        raise NotImplementedError

    def certify(self, defense: Defense, x: torch.Tensor, y: torch.Tensor, budgets: tuple[float, ...],
                threat_model: str, *, seed: int, batch_size: int, device: torch.device) -> Certified:
        raise NotImplementedError

    def forward_passes(self, budgets: tuple[float, ...]) -> float:
        """Forward-pass equivalents per image (the cost model reads it)."""
        raise NotImplementedError


class _Bounds(Certifier):
    """Bound propagation through the deployed network (``bench.certify.bounds``)."""

    method: ClassVar[Literal["ibp", "deepz"]]
    passes_per_budget: ClassVar[float]

    def applies_to(self, factory: Callable[..., Any]) -> str | None:
        if defense_class_flag(factory, "stochastic"):
            return f"{self.method} certifies deterministic networks; this defense draws randomness at test time"
        if defense_class_flag(factory, "has_reject_class"):
            return f"{self.method} certifies a class decision; this defense has a reject option"
        return None

    def certify(self, defense: Defense, x: torch.Tensor, y: torch.Tensor, budgets: tuple[float, ...],
                threat_model: str, *, seed: int, batch_size: int, device: torch.device) -> Certified:
        from .bounds import certify_bounds, check_supported

        model = defense.deployed().eval()
        norm: Literal["linf", "l2"] = "l2" if threat_model == "l2" else "linf"
        check_supported(model, self.method, tuple(x.shape[1:]))
        clean = (predict(model, x, device=device, batch_size=batch_size) == y).numpy()
        flags = {b: certify_bounds(model, x, y, b, norm=norm, method=self.method, batch_size=batch_size,
                                   device=device).cpu().numpy() for b in budgets}
        return Certified(flags, clean)

    def forward_passes(self, budgets: tuple[float, ...]) -> float:
        return self.passes_per_budget * max(len(budgets), 1)


@certifiers.register("ibp", version="1")
class IntervalBounds(_Bounds):
    """Interval bound propagation (Gowal et al. 2018): a box of bounds per layer, the last layer folded into the
    margins. Cheap (about two passes per budget), loose on a network not trained for it."""

    threat_models = ("linf", "l2")
    method = "ibp"
    passes_per_budget = 2.0


@certifiers.register("deepz", version="1")
class DeepZ(_Bounds):
    """DeepZ zonotopes (Singh et al. 2018): exact through affine layers, the minimal-area ReLU relaxation, with
    an interval box carried beside (never looser than IBP); its cost grows with the input's size (a generator per
    pixel, one per unstable ReLU). No max-pool rule: a network with one is "—"."""

    threat_models = ("linf", "l2")
    method = "deepz"
    passes_per_budget = 100.0  # generators as a batch: about a pass per ~8 pixels of an MNIST image


@certifiers.register("smoothing", version="1")
class SmoothingCertificate(Certifier):
    """Randomized smoothing's CERTIFY (Cohen et al. 2019): n0 noise draws select the class, n more bound its
    probability below (Clopper–Pearson, one-sided 1 - alpha), radius σ·Φ⁻¹(p_A). Full suites: n0 100, n 100,000,
    alpha 0.001 (the paper's)."""

    threat_models = ("l2",)

    def __init__(self, *, n0: int = 100, n: int = 100_000, alpha: float = 0.001):
        if n0 < 1 or n < 1:
            raise ValueError(f"n0 and n must be >= 1, got n0={n0}, n={n}")
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        self.n0, self.n, self.alpha = n0, n, alpha

    def applies_to(self, factory: Callable[..., Any]) -> str | None:
        if not defense_class_flag(factory, "is_smoothed"):
            return "smoothing certifies a smoothed classifier (randomized-smoothing); this defense is not one"
        return None

    def certify(self, defense: Defense, x: torch.Tensor, y: torch.Tensor, budgets: tuple[float, ...],
                threat_model: str, *, seed: int, batch_size: int, device: torch.device) -> Certified:
        from .smoothing import ABSTAIN, certify_smoothed

        if threat_model != "l2":
            raise Unsupported(f"smoothing certifies an L2 radius, not {threat_model}")
        base, sigma = defense.smoothed_base()
        out = certify_smoothed(base, x, sigma, n0=self.n0, n=self.n, alpha=self.alpha,
                               num_classes=defense.spec.num_classes, seed=seed, batch_size=batch_size, device=device)
        prediction, radius = out.prediction.cpu().numpy(), out.radius.cpu().numpy()
        right = prediction == y.numpy()
        # Cohen et al.'s certified accuracy at radius ε: right, and certified at a radius of at least ε.
        flags = {b: right & (radius >= b) for b in budgets}
        return Certified(flags, right, np.where(right, radius, 0.0).astype(np.float32), prediction == ABSTAIN)

    def forward_passes(self, budgets: tuple[float, ...]) -> float:
        return float(self.n0 + self.n)
