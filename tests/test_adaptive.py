"""Detector-aware attacks (bench.detection.adaptive) and the plain PyTorch C&W backend, on 8x8 digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from torch import nn

from bench.detection.adaptive import (GuardedClassifier, differentiable_detector, guarded_classifier, guarded_predictions)
from bench.attacks import attack_loss, get_attack
from bench.data import DataContext
from bench.detection import build_detector_data, positive_scores
from tests.conftest import digits_for_detection, trained_digits_bimodel

K = 10


# --------------------------------------------------------------------------- the detector in torch


@pytest.fixture(scope="module")
def features():
    """Two fake softmaxes per row (N, 2K) and a label that depends on their disagreement, as the detector's."""
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.dirichlet(np.full(K, 0.3), 400), rng.dirichlet(np.full(K, 0.3), 400)], axis=1)
    labels = (np.abs(f[:, :K] - f[:, K:]).sum(1) + rng.normal(0, 0.2, 400) > 1.2).astype(int)
    assert 0.2 < labels.mean() < 0.8
    return f.astype(np.float32).astype(np.float64), labels  # float32-representable: the module's input dtype


@pytest.mark.parametrize("make", [lambda: SVC(kernel="rbf"), lambda: SVC(kernel="linear"),
                                  lambda: SVC(kernel="poly", degree=3, coef0=1.0),
                                  lambda: SVC(kernel="sigmoid", gamma=0.5), lambda: LogisticRegression(max_iter=1000)],
                         ids=["rbf", "linear", "poly", "sigmoid", "logistic"])
def test_exact_detector_matches_decision_function(features, make):
    f, labels = features
    clf = make().fit(f[:300], labels[:300])
    module = differentiable_detector(clf, f[:300])
    assert module.exact
    x = torch.tensor(f, dtype=torch.float32, requires_grad=True)  # training rows and 100 unseen ones
    out = module(x)
    assert out.shape == (len(f),) and out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), clf.decision_function(f), atol=1e-5, rtol=0)
    # decision > 0 means classes_[1] (sklearn negates libsvm's sign for binary SVMs)
    assert np.array_equal((out.detach().numpy() > 0).astype(int), clf.predict(f))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0  # also at support vectors (rbf distance 0)
    assert len(list(module.buffers())) >= 2 and not list(module.parameters())  # moves with .to(device)


def test_surrogate_for_random_forest(features):
    f, labels = features
    rf = RandomForestClassifier(n_estimators=30, random_state=0).fit(f[:300], labels[:300])
    with pytest.raises(ValueError, match="surrogate"):
        differentiable_detector(rf)
    module = differentiable_detector(rf, f[:300], seed=0)
    assert not module.exact
    with torch.no_grad():
        out = module(torch.tensor(f[:300], dtype=torch.float32)).numpy()
        again = differentiable_detector(rf, f[:300], seed=0)(torch.tensor(f[:300], dtype=torch.float32)).numpy()
    target = positive_scores(rf, f[:300])  # predict_proba of class 1
    assert spearmanr(out, target).statistic > 0.9 and np.corrcoef(out, target)[0, 1] > 0.9
    assert np.array_equal(out, again)  # seeded


# --------------------------------------------------------------------------- a guarded model pair


@pytest.fixture(scope="module")
def data():
    return digits_for_detection()


@pytest.fixture(scope="module")
def guarded(data):
    """A CNN and an MLP (as test_detection) and an RBF SVM fitted on clean vs. minimal-budget FGSM images."""
    det = trained_digits_bimodel(data)
    d = build_detector_data(det.models(), data.test_x, data.test_y, "fgsm", {}, [0.05, 0.1, 0.2, 0.3], seed=0)
    det.fit_detector(d.x, d.is_adv)
    model_a = det.models()[0]
    with torch.no_grad():
        correct = model_a(data.test_x).argmax(1) == data.test_y
    x, y = data.test_x[correct][:100], data.test_y[correct][:100]
    return det, guarded_classifier(det), x, y, d


def _outcome(det, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image: model_a misclassifies it; the fitted scikit-learn detector flags it."""
    with torch.no_grad():
        wrong = (det.models()[0](x_adv).argmax(1) != y).numpy()
    return wrong, positive_scores(det.detector(), det.features(x_adv)) > 0


def test_guarded_logits(guarded, data):
    det, g, x, y, d = guarded
    assert g.num_classes == K and g.reject_class == K and g.threshold == 0.0 and g.detector_score.exact
    images = torch.cat([x, d.x[d.is_adv]])  # clean and FGSM: both sides of the detector
    labels = torch.cat([y, data.test_y[torch.from_numpy(d.is_adv)]])
    s = positive_scores(det.detector(), det.features(images))
    with torch.no_grad():
        logits, z = g(images), det.models()[0](images)
        merged = g.attack_logits(images, labels)
    assert logits.shape == (len(images), K + 1) and torch.equal(logits[:, :K], z)
    flagged = s > 0
    assert 5 < flagged.sum() < len(s) - 5
    clear = np.abs(s) > 1e-4  # float32 logits cannot resolve a score right at the threshold
    assert clear.mean() > 0.95
    assert np.array_equal((logits.argmax(1) == K).numpy()[clear], flagged[clear])
    assert torch.equal(guarded_predictions(g, images, batch_size=64), logits.argmax(1))
    # attack_logits: model_a's logits, the true class's column raised to the rejection logit
    rows = torch.arange(len(labels))
    assert torch.equal(merged[rows, labels], torch.maximum(z[rows, labels], logits[:, K]))
    others = torch.ones_like(z, dtype=torch.bool).scatter(1, labels[:, None], False)
    assert torch.equal(merged[others], z[others])
    # argmax(attack_logits) != y  <=>  model_a errs and the detector is silent
    pred = logits.argmax(1)
    assert torch.equal(merged.argmax(1) != labels, (pred != labels) & (pred != K))
    # attack_loss: capped hinges on model_a's margin and on the detector's, summed
    margin = z.scatter(1, labels[:, None], float("-inf")).amax(1) - z[rows, labels]
    expected = margin.clamp(max=g.attack_margin) + (g.threshold - torch.from_numpy(s).float()).clamp(max=g.attack_margin)
    assert g.attack_loss(images, labels).item() == pytest.approx(expected.sum().item(), rel=1e-4, abs=1e-3)
    # a threshold no score reaches: never rejected, the K+1 argmax is model_a's
    never = GuardedClassifier(g.model_a, g.model_b, g.detector_score, threshold=1e6)
    assert torch.equal(guarded_predictions(never, images), z.argmax(1))


def test_guarded_classifier_with_surrogate(guarded, data, monkeypatch):
    det, _, x, y, d = guarded
    rf = RandomForestClassifier(n_estimators=30, random_state=0).fit(det.features(d.x), d.is_adv)
    monkeypatch.setattr(det, "detector", lambda: rf)
    with pytest.raises(ValueError, match="surrogate"):
        guarded_classifier(det)
    g = guarded_classifier(det, features_from=d.x)
    assert g.threshold == 0.5 and not g.detector_score.exact  # probabilities: the boundary is 0.5
    with torch.no_grad():
        s = g.detector_score(torch.tensor(det.features(d.x), dtype=torch.float32)).numpy()
    assert spearmanr(s, positive_scores(rf, det.features(d.x))).statistic > 0.8


def test_attack_logits_hook_and_refusals(guarded):
    _, g, x, y, _ = guarded

    class LogitsOnly(nn.Module):  # a surface with attack_logits but no attack_loss of its own
        def __init__(self) -> None:
            super().__init__()
            self.inner = g

        def forward(self, x):
            return self.inner(x)

        def attack_logits(self, x, labels):
            return self.inner.attack_logits(x, labels)

    surface = LogitsOnly()
    # without an attack_loss of its own: cross-entropy on attack_logits
    expected = F.cross_entropy(g.attack_logits(x[:8], y[:8]), y[:8], reduction="sum")
    assert torch.allclose(attack_loss(surface, x[:8], y[:8]), expected)
    assert torch.allclose(attack_loss(g, x[:8], y[:8]), g.attack_loss(x[:8], y[:8]))
    for model in (g, surface):
        with pytest.raises(ValueError, match="backend: torch"):
            get_attack("pgd-linf", {"backend": "foolbox"}).run(model, x[:4], y[:4], 0.1)
        with pytest.raises(ValueError, match="backend: torch"):
            get_attack("cw-l2").run(model, x[:4], y[:4], 1.0)  # foolbox, the default
        with pytest.raises(ValueError, match="untargeted"):
            get_attack("pgd-linf", {"backend": "torch"}).run(model, x[:4], y[:4], 0.1, targets=(y[:4] + 1) % K)


# --------------------------------------------------------------------------- torch C&W


def test_torch_cw_on_plain_model_mirrors_foolbox(guarded):
    det, _, x, y, _ = guarded
    model = det.models()[0]
    x, y = x[:64], y[:64]
    params = {"steps": 20, "binary_search_steps": 3, "learning_rate": 0.1}
    out = {b: get_attack("cw-l2", {**params, "backend": b}).run(model, x, y, 0.1, batch_size=32)
           for b in ("torch", "foolbox")}
    adv = out["torch"]
    assert adv.shape == x.shape and adv.dtype == torch.float32 and 0 <= adv.min() and adv.max() <= 1
    with torch.no_grad():
        fooled = {b: (model(a).argmax(1) != y) for b, a in out.items()}
    assert fooled["torch"].float().mean() >= 0.8  # clean accuracy 1 on these images
    assert torch.equal(adv[~fooled["torch"]], x[~fooled["torch"]])  # failures unperturbed
    assert (adv[fooled["torch"]] != x[fooled["torch"]]).flatten(1).any(1).all()
    assert abs(fooled["torch"].float().mean() - fooled["foolbox"].float().mean()) <= 0.05
    same = (adv - out["foolbox"]).flatten(1).abs().max(1).values < 1e-3  # the same algorithm, step for step
    assert same.float().mean() >= 0.9
    # targeted (job.targets): lands on the target far more often than chance (1/9); measured 0.59
    targets = (y + 1) % K
    x_t = get_attack("cw-l2", {**params, "backend": "torch"}).run(model, x, y, 1.0, targets=targets)
    with torch.no_grad():
        assert (model(x_t).argmax(1) == targets).float().mean() >= 0.4


# --------------------------------------------------------------------------- adaptive vs. non-adaptive


def test_adaptive_pgd_evades_the_detector(guarded):
    det, g, x, y, _ = guarded
    attack = get_attack("pgd-linf", {"steps": 20, "backend": "torch"})
    wrong_plain, flagged_plain = _outcome(det, attack.run(det.models()[0], x, y, 0.15), y)
    x_adapt = attack.run(g, x, y, 0.15)
    wrong, flagged = _outcome(det, x_adapt, y)
    plain_rate, adaptive_rate = flagged_plain[wrong_plain].mean(), flagged[wrong].mean()
    # measured: plain 0.56 of 77 misclassified flagged; adaptive 0.22 of 46
    assert wrong_plain.sum() >= 50 and wrong.sum() >= 25
    assert plain_rate >= 0.4 and adaptive_rate <= 0.35 and adaptive_rate <= plain_rate - 0.2
    pred = guarded_predictions(g, x_adapt)  # the surface agrees with scikit-learn's detector
    assert torch.equal(pred == K, torch.from_numpy(flagged))
    assert torch.equal((pred != y) & (pred != K), torch.from_numpy(wrong & ~flagged))


def test_adaptive_cw_misclassifies_undetected(guarded):
    det, g, x, y, _ = guarded
    x, y = x[:50], y[:50]
    attack = get_attack("cw-l2", {"steps": 50, "binary_search_steps": 5, "backend": "torch"})
    wrong_plain, flagged_plain = _outcome(det, attack.run(det.models()[0], x, y, 1.0), y)
    x_adapt = attack.run(g, x, y, 1.0)
    wrong, flagged = _outcome(det, x_adapt, y)
    # measured: plain 0.98 misclassified, 0.51 of them flagged (0.48 undetected); adaptive 0.94, none flagged
    assert flagged_plain[wrong_plain].mean() >= 0.25
    assert (wrong & ~flagged).mean() >= 0.7 and flagged[wrong].mean() <= 0.05
    assert (wrong & ~flagged).mean() >= (wrong_plain & ~flagged_plain).mean() + 0.2
    pred = guarded_predictions(g, x_adapt)
    fooled = (pred != y) & (pred != K)
    assert (fooled == torch.from_numpy(wrong & ~flagged)).float().mean() >= 0.95  # float32 vs. sklearn's float64
    assert torch.equal(x_adapt[~fooled], x[~fooled])  # failures come back unperturbed


def test_detector_weight_sweep_only_adds_successes(guarded, data, tmp_path):
    from bench.runner import RunContext
    from bench.runner.detector_steps import _sweep_detector_weights

    _, g, x, y, _ = guarded
    ctx = RunContext(store_dir=tmp_path, data=DataContext("data"), device="cpu", batch_size=64)
    attack = get_attack("pgd-linf", {"steps": 10, "backend": "torch"})

    def through(x_adv):
        pred = guarded_predictions(g, x_adv)
        return (pred != y) & (pred != K)

    cfg = {"budget": 0.15, "detector_weights": [3.0]}
    try:
        single = through(_sweep_detector_weights(attack, g, x, y, cfg["detector_weights"], cfg["budget"], ctx, seed=0))
        swept_adv = _sweep_detector_weights(attack, g, x, y, [3.0, 0.3, 0.1], cfg["budget"], ctx, seed=0)
        assert g.detector_weight == 0.1 or through(swept_adv).all()  # the weights were tried in order
    finally:
        g.detector_weight = 1.0  # the module's other tests use the default
    swept = through(swept_adv)
    assert (swept | ~single).all() and swept.sum() > single.sum()  # later weights only add successes
    assert (swept_adv - x).abs().amax() <= 0.15 + 1e-6
