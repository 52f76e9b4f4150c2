"""Metrics of one (dataset, defense, attack, budget) cell.

Accuracies carry n and a 95% Wilson score interval; perturbation sizes are
summarized over the examples the attack succeeded on, since a failed attack's
output says nothing about the perturbation it needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The ends are exactly 0 and 1 at p = 0 and p = 1; float rounding would leave them a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


@dataclass
class CellMetrics:
    n: int
    clean_acc: float
    robust_acc: float
    robust_ci_low: float
    robust_ci_high: float
    attack_success_rate: float | None  # over examples the defense got right when clean
    l2_mean: float | None
    l2_median: float | None
    linf_mean: float | None
    linf_median: float | None
    mse_mean: float | None
    mse_median: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _summary(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return (None, None)
    return (float(values.mean()), float(np.median(values)))


def cell_metrics(x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray,
                 pred_adv: np.ndarray, targets: np.ndarray | None = None) -> CellMetrics:
    """Metrics from clean inputs, adversarial inputs, labels and both predictions.

    An attack succeeds on an example the defense classified correctly when clean
    and (untargeted) misclassifies after the attack, or (targeted) assigns the target.
    A defense with a reject class is scored by its predicted label: a rejection
    (label == num_classes) is never equal to y, so it counts as not correct;
    how a rejection should count is that defense's report's business.
    """
    n = int(len(y))
    clean_correct = pred_clean == y
    adv_correct = pred_adv == y
    fooled = (pred_adv == targets) if targets is not None else ~adv_correct
    success = clean_correct & fooled
    delta = (x_adv - x).reshape(n, -1).astype(np.float64)
    l2 = np.sqrt((delta ** 2).sum(1))[success]
    linf = np.abs(delta).max(1, initial=0.0)[success]
    mse = (delta ** 2).mean(1)[success]
    robust = int(adv_correct.sum())
    low, high = wilson_interval(robust, n)
    attacked = int(clean_correct.sum())
    return CellMetrics(
        n=n,
        clean_acc=float(clean_correct.mean()) if n else 0.0,
        robust_acc=robust / n if n else 0.0,
        robust_ci_low=low,
        robust_ci_high=high,
        attack_success_rate=float(success.sum() / attacked) if attacked else None,
        l2_mean=_summary(l2)[0], l2_median=_summary(l2)[1],
        linf_mean=_summary(linf)[0], linf_median=_summary(linf)[1],
        mse_mean=_summary(mse)[0], mse_median=_summary(mse)[1],
    )
