"""Randomized smoothing (Cohen et al. 2019): PREDICT and CERTIFY (bench/certify/smoothing.py), their agreement with
ART's certify (bench/benchmark_certify.py), and the ``randomized-smoothing`` defense (defenses/smoothing.py), on
hand-made base classifiers and a tiny net trained on sklearn's 8x8 digits."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from bench.benchmark_certify import agreement, art_certify, radius_tolerance
from bench.certify.smoothing import (ABSTAIN, SmoothedCertificate, certify_smoothed, clopper_pearson_lower,
                                     noise_counts, predict_from_counts, predict_smoothed)
from bench.registry import defenses
from defenses.smoothing import NEVER, ROWS_PER_PASS, RandomizedSmoothing
from tests.conftest import trained_defense

CPU = torch.device("cpu")
SIGMA, ALPHA = 0.25, 0.001
X = torch.full((6, 1, 8, 8), 0.5)  # images for the hand-made classifiers


class Constant(nn.Module):
    """Votes ``label`` whatever the input."""

    def __init__(self, label: int, classes: int = 10):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(label), classes).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


class Threshold(nn.Module):
    """Votes class 1 where pixel (0, 0) exceeds ``level``, else class 0 (10 outputs): on a 0.5 image at level 0.5,
    a fair coin under the noise."""

    def __init__(self, level: float = 0.5):
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        above = (x[:, 0, 0, 0] > self.level).float()
        return torch.nn.functional.pad(torch.stack([1 - above, above], dim=1), (0, 8))


@pytest.fixture(scope="module")
def smoothed(digits):
    """A tiny randomized-smoothing defense (strauss-mnist on the 8x8 digits, 3 epochs: ~0.5 s)."""
    return trained_defense(digits, "randomized-smoothing", sigma=SIGMA, epochs=3, batch_size=64)


# --------------------------------------------------------------------------- the noise and the votes


def test_votes_sum_to_n_noise_has_sigma_and_is_not_clipped():
    gen = torch.Generator().manual_seed(0)
    for batch_size in (7, 1000):  # chunks that split an image's draws, and one pass for several images
        counts = noise_counts(Threshold(), X, SIGMA, 300, 10, generator=gen, batch_size=batch_size, device=CPU)
        assert counts.dtype == torch.int64 and counts.shape == (6, 10) and (counts.sum(1) == 300).all()
    # P(0.5 + ε > 0.5 + σ) = 1 - Φ(1) = 0.159 if the noise has standard deviation σ.
    counts = noise_counts(Threshold(0.5 + SIGMA), X, SIGMA, 4000, 10, generator=gen, batch_size=4096, device=CPU)
    assert counts[:, 1].sum().item() / 24_000 == pytest.approx(1 - norm.cdf(1), abs=0.01)
    # Above 1 on a white image: half the draws, which clipping to [0, 1] would remove.
    counts = noise_counts(Threshold(1.0), torch.ones(2, 1, 8, 8), SIGMA, 2000, 10, generator=gen, batch_size=512,
                          device=CPU)
    assert counts[:, 1].sum().item() / 4000 == pytest.approx(0.5, abs=0.03)


def test_predict_abstains_on_a_coin_flip_and_answers_a_constant():
    gen = torch.Generator().manual_seed(0)
    common = dict(n=200, alpha=ALPHA, num_classes=10, generator=gen, batch_size=512, device=CPU)
    assert (predict_smoothed(Threshold(), X, SIGMA, **common) == ABSTAIN).all()
    assert predict_smoothed(Constant(3), X, SIGMA, **common).tolist() == [3] * 6
    # The test itself: 60 of 100 against the runner-up is p = 0.057 (abstain at 0.001, answer at 0.1).
    counts = torch.tensor([[60, 40, 0], [0, 10, 90], [5, 5, 0]])
    assert binomtest(60, 100).pvalue == pytest.approx(0.0569, abs=1e-3)
    assert predict_from_counts(counts, ALPHA).tolist() == [ABSTAIN, 2, ABSTAIN]  # a tie at the top abstains
    assert predict_from_counts(counts, 0.1).tolist() == [0, 2, ABSTAIN]


def test_certify_on_a_constant_classifier_gives_the_clopper_pearson_radius():
    n = 1000
    cert = certify_smoothed(Constant(4), X, SIGMA, n0=10, n=n, alpha=ALPHA, num_classes=10, seed=0,
                            batch_size=4096, device=CPU)
    # n successes of n: the one-sided (1 - alpha) Clopper–Pearson lower bound is alpha^(1/n).
    expected = SIGMA * norm.ppf(ALPHA ** (1 / n))
    assert cert.prediction.tolist() == [4] * 6 and cert.counts.tolist() == [n] * 6
    assert cert.prediction.dtype == cert.counts.dtype == torch.int64 and cert.radius.dtype == torch.float32
    assert cert.radius.tolist() == pytest.approx([expected] * 6, rel=1e-6)
    # A fair coin between two classes: p_A_lower < 1/2, so it abstains with radius 0.
    coin = certify_smoothed(Threshold(), X, SIGMA, n0=10, n=n, alpha=ALPHA, num_classes=10, seed=0,
                            batch_size=4096, device=CPU)
    assert (coin.prediction == ABSTAIN).all() and (coin.radius == 0).all() and (coin.counts < 560).all()


def test_clopper_pearson_bound_is_scipys_exact_interval():
    for k, n in [(0, 10), (3, 10), (499, 500), (500, 500), (260, 500)]:
        # A two-sided (1 - 2 alpha) exact interval's lower end is the one-sided (1 - alpha) bound.
        exact = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * ALPHA, method="exact").low
        assert float(clopper_pearson_lower(np.array(k), n, ALPHA)) == pytest.approx(exact, abs=1e-9)
    assert float(clopper_pearson_lower(np.array(500), 500, ALPHA)) == pytest.approx(ALPHA ** (1 / 500))


def test_the_certificate_is_a_function_of_its_seed():
    def run(seed: int) -> SmoothedCertificate:
        return certify_smoothed(Threshold(0.6), X, SIGMA, n0=20, n=300, alpha=ALPHA, num_classes=10, seed=seed,
                                batch_size=128, device=CPU)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("prediction", "radius", "counts"))
    assert not torch.equal(a.counts, c.counts)  # other draws
    assert len(set(a.counts.tolist())) > 1  # each image its own draws


# --------------------------------------------------------------------------- against ART's certify


def test_radii_agree_with_arts_certify_within_monte_carlo_error(smoothed, digits):
    base, x = smoothed.base_classifier(), digits.test_x[:20]
    settings = dict(n0=50, n=500, alpha=ALPHA, num_classes=10, seed=0, batch_size=1000, device=CPU)
    ours = certify_smoothed(base, x, SIGMA, **settings)
    pred, radius = art_certify(base, x, SIGMA, **settings)
    agree = agreement(ours.prediction.numpy(), ours.radius.numpy(), ours.counts.numpy(), pred, radius, n=500,
                      sigma=SIGMA, alpha=ALPHA)
    assert (ours.prediction != ABSTAIN).sum() >= 10 and (ours.radius > 0.2).any()  # a model worth certifying
    assert agree["same decision"] >= 0.9 and agree["within MC error"] >= 0.9, agree
    # The check has power: ours at another sigma is outside the Monte-Carlo error for most images.
    wrong = certify_smoothed(base, x, 2 * SIGMA, **settings)
    assert agreement(wrong.prediction.numpy(), wrong.radius.numpy(), wrong.counts.numpy(), pred, radius, n=500,
                     sigma=SIGMA, alpha=ALPHA)["within MC error"] < 0.6


def test_radius_tolerance_covers_a_few_draws_even_at_a_count_of_n():
    n = 500
    tol = radius_tolerance(np.array([n, 400, 260, 0]), n, SIGMA, ALPHA)
    r = lambda k: SIGMA * norm.ppf(float(clopper_pearson_lower(np.array(k), n, ALPHA)))
    assert tol[0] >= r(n) - r(n - 2) and tol[1] >= r(410) - r(400)
    assert tol[3] == 0.0  # far below the abstention threshold either way
    assert (tol < 0.2).all()


# --------------------------------------------------------------------------- the defense


def test_defense_flags_and_surfaces(smoothed, digits):
    assert smoothed.stochastic and smoothed.forward_passes == 100 and smoothed.gradient_surface == "soft"
    assert not smoothed.has_reject_class, "by default an abstention is an error (Cohen et al.)"
    assert RandomizedSmoothing(abstain="reject").has_reject_class, "or the harness's rejection"
    assert smoothed.spec.num_classes == 10 and smoothed.reject_class == 10 and smoothed.member_models() == []
    assert smoothed.is_smoothed and smoothed.smoothed_base() == (smoothed.base_classifier(), SIGMA)
    assert smoothed.surface_names() == list(smoothed.surfaces()) == ["deployed", "soft", "base"]
    x = digits.test_x[:8]
    assert smoothed.base_classifier()(x).shape == (8, 10)
    with torch.no_grad():
        for name in smoothed.surface_names():
            scores = smoothed.surface(name)(x)
            assert scores.shape == (8, 11), name
        assert (smoothed.surface("base")(x)[:, 10] == NEVER).all()
    art = smoothed.as_art("soft")  # the harness's ART adapter: K + 1 classes
    assert art.predict(x.numpy()).shape == (8, 11)


def test_deployed_is_predict_with_abstain_as_column_k_and_fresh_draws(smoothed, digits):
    x, deployed = digits.test_x[:40], smoothed.deployed().eval()
    torch.manual_seed(5)
    scores = deployed(x)
    torch.manual_seed(5)  # the same draws from the global generator: PREDICT's decision
    pred = predict_smoothed(smoothed.base_classifier(), x, SIGMA, n=100, alpha=ALPHA, num_classes=10,
                            generator=None, batch_size=ROWS_PER_PASS, device=CPU)
    assert (pred == ABSTAIN).any() and (pred != ABSTAIN).any()
    assert torch.equal(scores.argmax(1), torch.where(pred == ABSTAIN, 10, pred))
    assert torch.allclose(scores[:, :10].sum(1), torch.ones(40))  # vote shares
    assert not torch.equal(deployed(x), scores)  # fresh draws per call, in eval mode
    always = RandomizedSmoothing(samples=1, sigma=SIGMA)  # 1 vote of 1: p = 1 > alpha, always abstains
    always.setup(digits.input_spec(), seed=0, device=CPU)
    always.model = smoothed.base_classifier()
    assert (always.deployed()(x).argmax(1) == 10).all()


def test_soft_surface_is_differentiable_and_random(smoothed, digits):
    soft = smoothed.surface("soft")
    x = digits.test_x[:4].clone().requires_grad_(True)
    out = soft(x)
    assert (out[:, 10] == NEVER).all()
    assert torch.allclose(out[:, :10].exp().sum(1), torch.ones(4), atol=1e-5)  # log of a mean softmax
    (grad,) = torch.autograd.grad(torch.nn.functional.nll_loss(out, digits.test_y[:4]), x)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.equal(soft(x), soft(x))


def test_training_augments_with_unclipped_noise_at_sigma(digits):
    defense = defenses.get("randomized-smoothing").build(sigma=0.5, epochs=1, batch_size=64)
    x, y = torch.zeros(500, 1, 8, 8), torch.zeros(500, dtype=torch.long)
    noisy, same = defense.augment(x, y, torch.Generator().manual_seed(0))
    assert same is y and noisy.min() < 0 and noisy.std().item() == pytest.approx(0.5, rel=0.02)
    trained = trained_defense(digits, "randomized-smoothing", sigma=0.5, epochs=1, batch_size=64)
    with torch.no_grad():  # it learned something through ClassifierDefense.fit
        accuracy = (trained.base_classifier()(digits.test_x).argmax(1) == digits.test_y).float().mean()
    assert accuracy > 0.3


@pytest.mark.parametrize("params, message", [
    ({"sigma": 0}, "sigma must be > 0"),
    ({"sigma": -0.1}, "sigma must be > 0"),
    ({"samples": 0}, "samples must be >= 1 (noise draws per prediction), got 0"),
    ({"alpha": 0.5}, "alpha must be in (0, 0.5)"),
    ({"alpha": 0}, "alpha must be in (0, 0.5)"),
    ({"soft_samples": 0}, "soft_samples must be >= 1"),
])
def test_bad_parameters_fail_with_a_clear_error(params, message):
    with pytest.raises(ValueError) as e:
        defenses.get("randomized-smoothing").build(**params)
    assert message in str(e.value)


@pytest.mark.cuda
def test_certify_and_predict_on_the_device_agree_with_the_cpu(smoothed, digits):
    """On a GPU: the noise drawn there (a generator on the device), the votes counted there; certificates equal in
    distribution to the CPU's. Without one, the same on the CPU (another seed)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, x = smoothed.base_classifier(), digits.test_x[:20]
    settings = dict(n0=50, n=500, alpha=ALPHA, num_classes=10, batch_size=1000)
    cpu = certify_smoothed(base, x, SIGMA, seed=0, device=CPU, **settings)
    try:
        there = certify_smoothed(base.to(device), x, SIGMA, seed=1, device=device, **settings)
        assert there.radius.device.type == "cpu" and there.prediction.dtype == torch.int64
        agree = agreement(there.prediction.numpy(), there.radius.numpy(), there.counts.numpy(), cpu.prediction.numpy(),
                          cpu.radius.numpy(), n=500, sigma=SIGMA, alpha=ALPHA)
        assert agree["same decision"] >= 0.9 and agree["within MC error"] >= 0.9, agree
        scores = smoothed.deployed()(x.to(device))
        assert scores.device.type == device.type and scores.shape == (20, 11)
    finally:
        base.to(CPU)
