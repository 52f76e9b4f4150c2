"""Detectors as ART ``EvasionDetector``s: the bi-model detector's wrapper and the baselines.

* ``MismatchDetector``: a fitted detector defense (``bench.defense.DetectorDefense``) and its binary
  classifier as an ART ``EvasionDetector``.
* ``FeatureSqueezing``: the Xu et al. 2018 baseline of Monteiro et al.'s Table IV (bit-depth reduction
  and median smoothing, max L1 distance between softmax outputs, threshold at a fixed clean
  false-positive rate), registered as the baseline detector ``feature-squeezing``. A new baseline is a
  factory ``fn(model, **params)`` registered in ``bench.registry.baseline_detectors`` whose result has
  ``score(x, batch_size)`` and ``fpr``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from art.defences.detector.evasion.evasion_detector import EvasionDetector
from torch import nn

from ..registry import baseline_detectors
from .classifiers import positive_scores
from .evaluation import clean_threshold


def _as_tensor(x) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).detach().to("cpu", torch.float32)


class MismatchDetector(EvasionDetector):
    """A ``bimodel-mismatch`` defense (two trained models) and its binary classifier as an ART detector.

    ``threshold``: None uses the classifier's own decision (``predict``); a number flags inputs whose
    ``score`` exceeds it (e.g. ``tpr_at_fpr(...).threshold``).
    """

    defence_params = ["threshold"]

    def __init__(self, defense, threshold: float | None = None):
        super().__init__()
        self.defense = defense
        self.threshold = threshold

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 128, nb_epochs: int = 20, **kwargs) -> None:
        """Fit the binary classifier on the models' features of ``x``; ``y`` = is_adversarial."""
        self.defense.fit_detector(x, y, seed=kwargs.get("seed", 0))

    def score(self, x, batch_size: int = 256) -> np.ndarray:
        """The positive-class (attack) decision score of every input."""
        return positive_scores(self.defense.detector(), self.defense.features(_as_tensor(x), batch_size))

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs) -> tuple[dict, np.ndarray]:
        features = self.defense.features(_as_tensor(x), batch_size)
        classifier = self.defense.detector()
        scores = positive_scores(classifier, features)
        if self.threshold is None:
            is_adv = np.asarray(classifier.predict(features)).astype(int) == 1
        else:
            is_adv = scores > self.threshold
        return {"scores": scores, "features": features, "threshold": self.threshold}, is_adv.astype(bool)

    def _check_params(self) -> None:
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError("threshold must be finite or None")


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize [0, 1] values to 2**bits levels (Xu et al. 2018, Sec. 4)."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def median_smooth(x: torch.Tensor, window: int) -> torch.Tensor:
    """Per-channel median over a ``window`` x ``window`` neighbourhood, via ``unfold``.

    Matches ``scipy.ndimage.median_filter(x, size=(1, 1, window, window), mode="reflect")``, which Xu et
    al.'s code uses: edges extended by mirroring (including the edge pixel), an even window
    covering offsets -window//2 .. window//2 - 1, and for an even count the upper of the two middle
    values (scipy's rank filter at rank size//2).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if window == 1:
        return x.clone()
    n, c, h, w = x.shape
    before, after = window // 2, (window - 1) // 2
    # Half-sample-symmetric padding (scipy 'reflect'): concatenate flipped edge strips.
    padded = x
    if before or after:
        padded = torch.cat([padded[:, :, :before].flip(2), padded, padded[:, :, h - after:].flip(2)], dim=2)
        padded = torch.cat([padded[:, :, :, :before].flip(3), padded, padded[:, :, :, w - after:].flip(3)], dim=3)
    patches = F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), kernel_size=window)  # (n*c, k*k, h*w)
    median = patches.sort(dim=1).values[:, (window * window) // 2]
    return median.reshape(n, c, h, w)


class FeatureSqueezing(EvasionDetector):
    """Feature squeezing (Xu et al. 2018): the score is the largest L1 distance between the model's
    softmax on the input and on each squeezed version (bit-depth reduction to ``bits`` bits, median
    smoothing over a ``median_window`` square); the threshold is set on clean data only so that a
    fraction ``fpr`` of it is flagged. ``bits`` or ``median_window`` None leaves that squeezer out.
    """

    defence_params = ["bits", "median_window", "fpr"]

    def __init__(self, model: nn.Module, *, bits: int | None = 1, median_window: int | None = 2,
                 fpr: float = 0.05, device: str | torch.device | None = None):
        super().__init__()
        self.model = model
        self.bits, self.median_window, self.fpr = bits, median_window, fpr
        if device is None:  # where the model lives
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.threshold: float | None = None
        self._check_params()

    def _check_params(self) -> None:
        if self.bits is None and self.median_window is None:
            raise ValueError("feature squeezing needs at least one squeezer (bits or median_window)")
        if self.bits is not None and not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {self.bits}")
        if self.median_window is not None and self.median_window not in (2, 3):
            raise ValueError(f"median_window must be 2 or 3, got {self.median_window}")
        if not 0 <= self.fpr < 1:
            raise ValueError(f"fpr must be in [0, 1), got {self.fpr}")

    def squeezers(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        out = []
        if self.bits is not None:
            out.append(lambda x: reduce_bit_depth(x, self.bits))
        if self.median_window is not None:
            out.append(lambda x: median_smooth(x, self.median_window))
        return out

    @torch.no_grad()
    def score(self, x, batch_size: int = 256) -> np.ndarray:
        x = _as_tensor(x)
        was_training = self.model.training
        self.model.eval()
        try:
            scores = []
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(self.device)
                p = F.softmax(self.model(xb), dim=1)
                dists = [(p - F.softmax(self.model(s(xb)), dim=1)).abs().sum(1) for s in self.squeezers()]
                scores.append(torch.stack(dists).max(0).values.cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(scores).double().numpy() if scores else np.zeros(0)

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 128, nb_epochs: int = 20,
            **kwargs) -> None:
        """Set the threshold on clean data: ``x`` clean images, or with ``y`` (is_adversarial) given,
        only the rows where ``y`` is 0 are used."""
        x = _as_tensor(x)
        if y is not None:
            x = x[torch.from_numpy(np.asarray(y).reshape(-1) == 0)]
        self.threshold = clean_threshold(self.score(x, batch_size), self.fpr)

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs) -> tuple[dict, np.ndarray]:
        if self.threshold is None:
            raise RuntimeError("feature squeezing is not fitted: call fit(clean_images) first")
        scores = self.score(x, batch_size)
        return {"scores": scores, "threshold": self.threshold}, scores > self.threshold


@baseline_detectors.register("feature-squeezing")
def feature_squeezing(model: nn.Module, *, bits: int | None = 1, median_window: int | None = 2,
                      fpr: float = 0.05) -> FeatureSqueezing:
    """Feature squeezing (Xu et al. 2018) on the guarded model: bit-depth reduction and median smoothing,
    max L1 distance of softmax outputs, threshold at a clean false-positive rate ``fpr``."""
    return FeatureSqueezing(model, bits=bits, median_window=median_window, fpr=fpr)
