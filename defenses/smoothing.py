"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via randomized
smoothing"), with SmoothAdv's attack surface (Salman et al. 2019, "Provably robust deep learning via
adversarially trained smoothed classifiers").

The defense is a base classifier f trained with Gaussian data augmentation at the smoothing noise σ (Cohen et
al.'s training: f on x + N(0, σ² I), not clipped to [0, 1]), deployed as the smoothed classifier
g(x) = argmax_c P(f(x + ε) = c) through Cohen's Monte-Carlo PREDICT (``bench.certify.smoothing``): the top class
of ``samples`` noisy votes, or *abstain* where a binomial test at level ``alpha`` cannot tell the top two counts
apart. Its certificate (CERTIFY, a certified L2 radius per example) is ``bench.certify.smoothing.certify_smoothed``
on ``base_classifier()``.

The deployed model has K + 1 outputs and label K means "abstained". ``abstain`` says how an abstention counts:
``error`` (the default, Cohen et al.'s convention: an abstention is not a right answer, on a clean image or an
attacked one), or ``reject``, the harness's reject option (``has_reject_class``; docs/reject-option.md): on a
clean image an error, on an attacked one a defended example. Certified accuracy (CERTIFY) counts an abstention as
*not* certified either way.

Surfaces (every one has K + 1 columns; ``as_art`` tells ART so):

* ``deployed``: PREDICT's decision as scores, the K vote shares (counts / ``samples``) and column K set above them
  where PREDICT abstains; argmax is the decision. Counts have no gradient: score-based and decision-based attacks
  only (gradient attacks take ``soft``).
* ``soft``: log of the mean softmax of f over ``soft_samples`` fresh noise draws per call, the smoothed soft
  classifier that SmoothAdv attacks (Salman et al. 2019, Sec. 3.1), differentiable.
* ``base``: f alone (no noise), K logits.

``soft`` and ``base`` have the abstain column padded with a constant far below any score (``NEVER``), so they never
"abstain". Test-time draws come from torch's global generator (seeded per task by the harness, as
``defenses/randomized.py``) and stay on in eval mode (attack libraries call ``eval()``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from bench.certify.smoothing import ABSTAIN, noise_counts, predict_from_counts
from bench.adapters import to_art
from bench.defense import ClassifierDefense
from bench.registry import defenses
from defenses.randomized import NoiseLayer, SelfEnsemble

# Noisy rows per forward pass of the deployed model and the soft surface (more draws are split into chunks).
ROWS_PER_PASS = 1024
# The abstain column of the surfaces that never abstain: a constant below any log-probability or logit.
NEVER = -1e4


def with_abstain_column(scores: torch.Tensor, value: float = NEVER) -> torch.Tensor:
    """(B, K) scores -> (B, K + 1), the abstain column K a constant ``value``."""
    return torch.cat([scores, scores.new_full((len(scores), 1), value)], dim=1)


class SmoothedPrediction(nn.Module):
    """Cohen's PREDICT as a model: [0, 1] images -> (B, K + 1) scores whose argmax is its decision, K = abstain.

    Columns 0..K-1 hold the vote shares counts / samples (in [0, 1]); column K is 2 where PREDICT abstains (above
    every share), else 0 (below the top share, which is > 0). Fresh draws from torch's global generator per call."""

    def __init__(self, base: nn.Module, sigma: float, samples: int, alpha: float, num_classes: int):
        super().__init__()
        self.base, self.sigma, self.samples, self.alpha, self.num_classes = base, sigma, samples, alpha, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = noise_counts(self.base, x, self.sigma, self.samples, self.num_classes, generator=None,
                              batch_size=ROWS_PER_PASS, device=x.device)
        abstain = predict_from_counts(counts, self.alpha) == ABSTAIN
        shares = counts.to(x.dtype) / self.samples
        return torch.cat([shares, 2.0 * abstain.to(x.dtype)[:, None]], dim=1).to(x.device)


class SmoothedSoftmax(nn.Module):
    """SmoothAdv's target (Salman et al. 2019): log mean softmax of the base over ``draws`` fresh Gaussian draws
    per call (global generator), differentiable in the input; (B, K + 1), the abstain column ``NEVER``. RSE's
    self-ensemble over a noise layer in front of the base: the same batched draws."""

    def __init__(self, base: nn.Module, sigma: float, draws: int):
        super().__init__()
        self.ensemble = SelfEnsemble(nn.Sequential(NoiseLayer(sigma), base), draws, rows_per_pass=ROWS_PER_PASS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_abstain_column(self.ensemble(x))


class BaseWithAbstain(nn.Module):
    """The base classifier's K logits with the abstain column ``NEVER``: it never abstains."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_abstain_column(self.base(x))


@defenses.register("randomized-smoothing", version="1")
class RandomizedSmoothing(ClassifierDefense):
    """Randomized smoothing (Cohen et al. 2019): a base classifier trained on x + N(0, sigma²) (no clipping),
    deployed as the smoothed classifier through PREDICT with ``samples`` noise draws at level ``alpha``; an
    abstention is output K (never certified; on the leaderboard as ``abstain`` says).

    Paper settings: sigma 0.25 / 0.5 / 1.0 (images in [0, 1]), PREDICT with n = 100,000 and alpha 0.001, CERTIFY
    with n0 = 100, n = 100,000. The default ``samples`` 100 keeps a harness prediction at 100 forward passes per
    image (a prediction's cost is ``forward_passes``); PREDICT abstains more with fewer samples. ``soft_samples``:
    the draws per call of the ``soft`` surface (SmoothAdv's attack target, Salman et al. 2019). ``abstain``: an
    abstention counts as an ``error`` (Cohen et al.) or as a rejection (``reject``: defended when attacked)."""

    stochastic = True
    is_smoothed = True  # the ``smoothing`` certifier (bench.certify) reads ``smoothed_base``
    gradient_surface = "soft"  # PREDICT's counts have no gradient: check 7 probes what gradient attacks use

    def __init__(self, *, sigma: float = 0.25, samples: int = 100, alpha: float = 0.001, soft_samples: int = 8,
                 abstain: Literal["error", "reject"] = "error", **classifier_params):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 (the smoothing noise's standard deviation, images in [0, 1]), "
                             f"got {sigma}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1 (noise draws per prediction), got {samples}")
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5) (PREDICT's failure probability), got {alpha}")
        if soft_samples < 1:
            raise ValueError(f"soft_samples must be >= 1 (noise draws per call of the soft surface), "
                             f"got {soft_samples}")
        super().__init__(**classifier_params)
        self.sigma, self.samples, self.alpha, self.soft_samples = sigma, samples, alpha, soft_samples
        self.forward_passes = samples
        # Output K is an abstention either way; with ``reject`` the score step counts it as a rejection.
        self.abstain = abstain
        self.has_reject_class = abstain == "reject"

    @property
    def reject_class(self) -> int:
        return self.spec.num_classes

    def augment(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """Cohen et al.'s training: the base classifier on x + N(0, sigma²), not clipped (after crop/flip if asked)."""
        x, y = super().augment(x, y, generator)
        return x + self.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype), y

    def base_classifier(self) -> nn.Module:
        """The base network f (K logits): what CERTIFY (``bench.certify.smoothing``) takes."""
        if self.model is None:
            raise RuntimeError("randomized-smoothing: setup() first")
        return self.model

    def smoothed_base(self) -> tuple[nn.Module, float]:
        """The base classifier and the noise's sigma: what CERTIFY needs (``Defense.smoothed_base``)."""
        return self.base_classifier(), self.sigma

    def deployed(self) -> nn.Module:
        return SmoothedPrediction(self.base_classifier(), self.sigma, self.samples, self.alpha,
                                  self.spec.num_classes).eval()

    def member_models(self) -> list[nn.Module]:
        return []

    def surfaces(self) -> dict[str, nn.Module]:
        base = self.base_classifier()
        return {"deployed": self.deployed(),
                "soft": SmoothedSoftmax(base, self.sigma, self.soft_samples).eval(),
                "base": BaseWithAbstain(base).eval()}

    def as_art(self, surface: str = "deployed"):
        """Every surface has K + 1 columns (the abstain column), whether or not an abstention counts as a rejection."""
        return to_art(self.surface(surface), self.spec.shape, self.spec.num_classes + 1, self.device)

    def surface_names(self) -> list[str]:
        return ["deployed", "soft", "base"]
