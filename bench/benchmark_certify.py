"""``advbench bench certify``: randomized smoothing's CERTIFY (Cohen et al. 2019) in the harness
(``bench.certify.smoothing.certify_smoothed``) against ART 1.20's ``PyTorchRandomizedSmoothing.certify``, the
baseline, run in the same process on the same base classifier and images.

The base classifier is the ``randomized-smoothing`` defense's (the Strauss et al. Table 1 CNN trained briefly on
the embedded MNIST with Gaussian augmentation at sigma); ``n`` test images are certified by both with the same
n0 selection draws, ``samples`` estimation draws, sigma and alpha, and the same noisy rows per forward pass.

Measured, per implementation: throughput (images/s, best of ``repeats`` runs after a warm-up, alternating the
two so that a slow stretch of the machine hits both alike), abstention rate, certified accuracy (an abstention
is not certified) and mean radius; and how far the two agree:

* **same decision**: the fraction of images where both return the same class, or both abstain;
* **mean |radius diff|**: the mean absolute difference of the certified radii (0 where one abstains);
* **within MC error**: the fraction of images whose radius difference is within the Monte-Carlo error of two
  independent runs (``radius_tolerance``). Both are estimates from random draws (ours from torch's generator,
  ART's from NumPy's), so they cannot agree exactly; a systematic difference (another noise scale, clipping,
  another confidence bound) shows as a fraction well below ~0.99.

ART's ``certify`` draws its noise from NumPy's global generator (seeded here) and computes the Clopper–Pearson
bound with statsmodels, which is not a dependency of advbench: where statsmodels is missing, the same bound
(statsmodels' formula, by scipy: ``clopper_pearson_lower``) replaces ART's ``_lower_confidence_bound``; the
sampling, counting, selection, abstention and radius remain ART's. The table is written with
``bench.benchmark.write_results`` to ``<out_dir>/certify.csv`` and ``.json`` (the CLI's default ``out_dir``:
``leaderboard/benchmarks/``, beside the other benchmarks; ``out_dir=None`` writes nothing).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from tabulate import tabulate
from torch import nn

from .benchmark import interleaved_best, write_results
from .certify.smoothing import ABSTAIN, certify_smoothed, clopper_pearson_lower, radius_from_lower_bound
from .data import DataContext, load_dataset
from .registry import defenses

# Noisy rows per forward pass, for both implementations (ART: its ``batch_size``).
BATCH_SIZE = 1000
# Standard errors of the radius tolerance: ~0.3% of images of two agreeing implementations fall outside.
Z = 3.0


def radius_tolerance(counts: np.ndarray, n: int, sigma: float, alpha: float, z: float = Z) -> np.ndarray:
    """Per example: how far two independent CERTIFY runs of n draws may differ in radius by Monte-Carlo error alone.

    The radius is a monotone function of the count n_A of the selected class: r(k) = sigma * Phi^-1(p_lower(k)),
    p_lower the one-sided Clopper–Pearson bound (0 below p_lower 1/2, where CERTIFY abstains). Two runs' counts
    differ by a binomial difference with standard error sqrt(2 n p (1 - p)); p is estimated from ``counts`` with
    Laplace's rule, (n_A + 1) / (n + 2), so that a count of n (p_hat = 1, zero variance) still allows a few draws.
    The tolerance is the largest radius change that a count shift of z such standard errors plus one draw (the
    counts are integers) causes, through the exact map r, not its linearization: that map is steep near p = 1 and
    flat at the abstention threshold."""
    k = np.asarray(counts, dtype=np.float64)
    p = (k + 1) / (n + 2)
    shift = z * np.sqrt(2 * n * p * (1 - p)) + 1
    radius = lambda c: radius_from_lower_bound(clopper_pearson_lower(np.clip(c, 0, n), n, alpha), sigma)
    here = radius(k)
    return np.maximum(np.abs(radius(k + shift) - here), np.abs(radius(k - shift) - here))


def agreement(ours_prediction: np.ndarray, ours_radius: np.ndarray, ours_counts: np.ndarray,
              theirs_prediction: np.ndarray, theirs_radius: np.ndarray, *, n: int, sigma: float, alpha: float,
              z: float = Z) -> dict[str, float]:
    """Same decision (class or abstention), mean |radius difference|, and the fraction of examples whose radius
    difference is within ``radius_tolerance`` of our counts."""
    difference = np.abs(np.asarray(ours_radius, np.float64) - np.asarray(theirs_radius, np.float64))
    tolerance = radius_tolerance(ours_counts, n, sigma, alpha, z)
    return {"same decision": float(np.mean(np.asarray(ours_prediction) == np.asarray(theirs_prediction))),
            "mean |radius diff|": float(difference.mean()),
            "within MC error": float(np.mean(difference <= tolerance + 1e-6))}


def art_certify(base: nn.Module, x: torch.Tensor, sigma: float, *, n0: int, n: int, alpha: float, num_classes: int,
                seed: int, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """ART 1.20's CERTIFY on images ``x``: (prediction, radius) per example, -1 where it abstains. NumPy's global
    generator is seeded with ``seed`` for the call and restored after. Without statsmodels, ART's Clopper–Pearson
    bound is statsmodels' formula by scipy (module docstring)."""
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    smoothed = PyTorchRandomizedSmoothing(model=base.eval(), loss=nn.CrossEntropyLoss(),
                                          input_shape=tuple(x.shape[1:]), nb_classes=num_classes,
                                          device_type="gpu" if device.type == "cuda" else "cpu",
                                          sample_size=n0, scale=sigma, alpha=alpha)
    if importlib.util.find_spec("statsmodels") is None:
        smoothed._lower_confidence_bound = lambda k, total: float(clopper_pearson_lower(np.array(k), total, alpha))
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        prediction, radius = smoothed.certify(x.cpu().numpy(), n=n, batch_size=batch_size)
    finally:
        np.random.set_state(state)
    return prediction.astype(np.int64), radius.astype(np.float64)


def run_certify_benchmark(*, n: int = 100, sigma: float = 0.25, n0: int = 100, samples: int = 10_000,
                          alpha: float = 0.001, device: str = "cpu", repeats: int = 1,
                          out_dir: str | Path | None = None) -> list[dict]:
    """Train the smoothed base classifier (2 epochs on mnist5k), certify ``n`` test images with ours and ART's
    (n0 selection and ``samples`` estimation draws each), print the table and write it (``out_dir``)."""
    dev = torch.device(device)
    data = load_dataset("mnist5k", {}, DataContext(Path("data")))
    spec = data.input_spec()
    defense = defenses.get("randomized-smoothing").build(sigma=sigma, epochs=2)
    defense.setup(spec, seed=0, device=dev)
    defense.fit(data, seed=0, progress=False)
    base, k = defense.base_classifier(), spec.num_classes
    x, y = data.test_x[:n], data.test_y[:n].numpy()

    def ours(images: torch.Tensor, draws: int) -> tuple[np.ndarray, ...]:
        cert = certify_smoothed(base, images, sigma, n0=n0, n=draws, alpha=alpha, num_classes=k, seed=0,
                                batch_size=BATCH_SIZE, device=dev)
        return cert.prediction.numpy(), cert.radius.numpy().astype(np.float64), cert.counts.numpy()

    def art(images: torch.Tensor, draws: int) -> tuple[np.ndarray, ...]:
        return art_certify(base, images, sigma, n0=n0, n=draws, alpha=alpha, num_classes=k, seed=0,
                           batch_size=BATCH_SIZE, device=dev)

    ours(x[:2], min(samples, 100)), art(x[:2], min(samples, 100))  # warm-up: kernel selection, allocator
    timed = interleaved_best({"ours": lambda: ours(x, samples), "art": lambda: art(x, samples)}, repeats)
    (t_ours, (pred_o, radius_o, counts_o)), (t_art, (pred_a, radius_a)) = timed["ours"], timed["art"]
    agree = agreement(pred_o, radius_o, counts_o, pred_a, radius_a, n=samples, sigma=sigma, alpha=alpha)
    art_bound = "ART's (statsmodels)" if importlib.util.find_spec("statsmodels") else "scipy, statsmodels missing"

    def summary(pred: np.ndarray, radius: np.ndarray, seconds: float) -> dict:
        return {"images/s": round(len(x) / seconds, 2), "abstain": round(float(np.mean(pred == ABSTAIN)), 3),
                "certified acc": round(float(np.mean(pred == y)), 3),
                "mean radius": round(float(radius[pred != ABSTAIN].mean()) if (pred != ABSTAIN).any() else 0.0, 4)}

    rows = [{"implementation": "advbench certify_smoothed", **summary(pred_o, radius_o, t_ours),
             "speed vs ART": round(t_art / t_ours, 2), "same decision": round(agree["same decision"], 3),
             "mean |radius diff|": round(agree["mean |radius diff|"], 4),
             "within MC error": round(agree["within MC error"], 3)},
            {"implementation": f"ART PyTorchRandomizedSmoothing.certify (bound: {art_bound})",
             **summary(pred_a, radius_a, t_art), "speed vs ART": 1.0}]
    print(f"randomized-smoothing base (strauss-mnist, 2 epochs on mnist5k, sigma {sigma}); {len(x)} test images; "
          f"n0 {n0}, n {samples}, alpha {alpha}; {BATCH_SIZE} rows per pass; device {device}; torch threads "
          f"{torch.get_num_threads()}; best of {repeats}; radius tolerance: {Z} standard errors "
          f"(max radius {sigma * norm.ppf(alpha ** (1 / samples)):.3f})")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if out_dir is not None:
        write_results("certify", rows, out_dir, device=device, n=len(x), sigma=sigma, n0=n0, samples=samples,
                      alpha=alpha, repeats=repeats, batch_size=BATCH_SIZE, z=Z,
                      model=f"randomized-smoothing base: strauss-mnist, 2 epochs on mnist5k, sigma {sigma}")
    return rows
