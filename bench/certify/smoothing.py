"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via randomized
smoothing"): the smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ² I), its Monte-Carlo
PREDICT and CERTIFY (the paper's Algorithm / pseudocode in Sec. 3.2).

* ``noise_counts``: the base classifier f's votes on n noisy copies of each image. The noise is added in
  [0, 1] pixel space *without* clipping, before the model's own normalization (our models take [0, 1] images
  and normalize inside), as Cohen et al.'s code adds it before its normalization layer. The copies of a whole
  batch of images are drawn on the device and pushed through in chunks of at most ``batch_size`` rows, so
  there is no Python loop over images or draws.
* ``predict_smoothed`` (PREDICT): the top class of n draws, or ``ABSTAIN`` where a two-sided binomial test
  cannot tell the top two counts apart at level alpha. The probability that it returns a class other than
  g(x) is at most alpha (Cohen et al. Prop. 1).
* ``certify_smoothed`` (CERTIFY): the class c_A chosen on n0 draws, then a one-sided (1 − alpha)
  Clopper–Pearson lower bound p_A_lower on P(f(x + ε) = c_A) from n *fresh* draws (selection and estimation
  must be independent for the bound to hold), and the L2 radius σ·Φ⁻¹(p_A_lower) within which g's decision
  cannot change (Theorem 1 with p_B = 1 − p_A); it abstains where p_A_lower < 1/2. With probability at least
  1 − alpha a returned class is g(x) and g is constant on the ball.

A certificate is reproducible from its ``seed``, ``batch_size`` and device (the noise stream is drawn chunk
by chunk). Certified accuracy counts an abstention as *not* certified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

ABSTAIN = -1


@dataclass(frozen=True)
class SmoothedCertificate:
    """CERTIFY's output per example (CPU tensors)."""

    prediction: torch.Tensor  # int64: the smoothed classifier's class c_A, ABSTAIN where CERTIFY abstains
    radius: torch.Tensor      # float32: the certified L2 radius σ·Φ⁻¹(p_A_lower) (0.0 where it abstains)
    counts: torch.Tensor      # int64: n_A, the count of c_A among the n estimation draws


def noise_counts(base: nn.Module, x: torch.Tensor, sigma: float, n: int, num_classes: int, *,
                 generator: torch.Generator | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """(B, num_classes) int64 (on the CPU): the base classifier's votes on n Gaussian-noised copies of each image.

    The B·n (image, draw) rows are taken in order, image by image, at most ``batch_size`` rows per forward
    pass: one pass may hold the draws of several images, so small n does not waste passes. A vote is the
    argmax of the first ``num_classes`` outputs (a base net with an extra output never votes for it).
    ``generator``: a ``torch.Generator`` on ``device``; None draws from torch's global generator (what the
    defense's deployed model does, seeded per task by the harness).
    """
    if n < 1 or batch_size < 1 or num_classes < 1:
        raise ValueError(f"n, batch_size and num_classes must be >= 1, got {n}, {batch_size}, {num_classes}")
    base.eval()
    x = x.to(device)
    count = len(x)
    votes = torch.zeros(count * num_classes, dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, count * n, batch_size):
            rows = torch.arange(start, min(start + batch_size, count * n), device=device) // n  # image of each row
            noisy = x[rows] + sigma * torch.randn((len(rows), *x.shape[1:]), generator=generator, device=device,
                                                  dtype=x.dtype)
            label = base(noisy)[:, :num_classes].argmax(1)
            votes += torch.bincount(rows * num_classes + label, minlength=count * num_classes)
    return votes.view(count, num_classes).cpu()


def predict_from_counts(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """PREDICT's decision from vote counts (B, K): int64 per example, the top class, or ``ABSTAIN`` where the
    two-sided binomial test of the top count against the runner-up (n_1 of n_1 + n_2 at p = 1/2) has p > alpha.
    A tie at the top always abstains (p = 1)."""
    if counts.shape[1] < 2:
        raise ValueError(f"PREDICT compares the top two counts: it needs >= 2 classes, got {counts.shape[1]}")
    top = counts.topk(2, dim=1)
    decision = top.indices[:, 0].clone()
    for i, (first, second) in enumerate(top.values.tolist()):
        if binomtest(int(first), int(first + second), p=0.5).pvalue > alpha:
            decision[i] = ABSTAIN
    return decision.to(torch.int64)


def predict_smoothed(base: nn.Module, x: torch.Tensor, sigma: float, *, n: int, alpha: float, num_classes: int,
                     generator: torch.Generator | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """Cohen's PREDICT: int64 per example (CPU), ABSTAIN where the two-sided binomial test of the top two counts
    has p > alpha; a returned class differs from the smoothed classifier's with probability at most alpha."""
    counts = noise_counts(base, x, sigma, n, num_classes, generator=generator, batch_size=batch_size, device=device)
    return predict_from_counts(counts, alpha)


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """The one-sided (1 − alpha) Clopper–Pearson lower bound on a binomial proportion: Beta(alpha; k, n − k + 1)
    quantile, 0 for k = 0 (as statsmodels' ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``,
    which Cohen et al.'s code and ART call). For k = n it is alpha^(1/n)."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, k, trials - k + 1)
    return np.where(k > 0, bound, 0.0)


def radius_from_lower_bound(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """σ·Φ⁻¹(p_A_lower) where p_A_lower >= 1/2, else 0 (CERTIFY abstains there)."""
    p = np.asarray(p_lower, dtype=np.float64)
    return np.where(p >= 0.5, sigma * norm.ppf(np.maximum(p, 0.5)), 0.0)


def certify_smoothed(base: nn.Module, x: torch.Tensor, sigma: float, *, n0: int, n: int, alpha: float,
                     num_classes: int, seed: int, batch_size: int, device: torch.device) -> SmoothedCertificate:
    """Cohen's CERTIFY: select c_A from n0 draws, estimate p_A's one-sided (1 - alpha) Clopper-Pearson lower bound
    from n fresh draws, radius sigma * Phi^-1(p_A_lower), abstain where p_A_lower < 0.5.

    The draws come from a generator on ``device`` seeded with ``seed``: the n0 selection draws of every image,
    then the n estimation draws (independent of the selection, as the bound requires)."""
    if not sigma > 0 or not 0 < alpha < 1:
        raise ValueError(f"sigma must be > 0 and alpha in (0, 1), got sigma={sigma}, alpha={alpha}")
    generator = torch.Generator(device=device).manual_seed(seed)
    selected = noise_counts(base, x, sigma, n0, num_classes, generator=generator, batch_size=batch_size,
                            device=device).argmax(1)
    estimated = noise_counts(base, x, sigma, n, num_classes, generator=generator, batch_size=batch_size,
                             device=device)
    n_a = estimated.gather(1, selected[:, None]).squeeze(1)
    p_lower = clopper_pearson_lower(n_a.numpy(), n, alpha)
    certified = torch.from_numpy(p_lower >= 0.5)
    radius = torch.from_numpy(radius_from_lower_bound(p_lower, sigma)).to(torch.float32)
    prediction = torch.where(certified, selected, torch.full_like(selected, ABSTAIN)).to(torch.int64)
    return SmoothedCertificate(prediction=prediction, radius=radius.masked_fill(~certified, 0.0),
                               counts=n_a.to(torch.int64))
