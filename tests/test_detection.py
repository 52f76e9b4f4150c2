"""The bi-model mismatch detector (Monteiro et al. 2019) and the feature-squeezing baseline, on 8x8 digits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from scipy.stats import binom

from bench.detection import (FeatureSqueezing, MismatchDetector, build_detector_data, cross_attack_matrix,
                             cross_validate, make_classifier, median_smooth, tpr_at_fpr)
from bench.registry import defenses
from tests.conftest import digits_for_detection, trained_digits_bimodel

FGSM_BUDGETS = [0.05, 0.1, 0.2, 0.3, 0.5]


@pytest.fixture(scope="module")
def data():
    return digits_for_detection()


@pytest.fixture(scope="module")
def bimodel(data):
    return trained_digits_bimodel(data)


@pytest.fixture(scope="module")
def fgsm_data(bimodel, data):
    return build_detector_data(bimodel.models(), data.test_x, data.test_y, "fgsm", {}, FGSM_BUDGETS, seed=0)


def _predict(model, x):
    with torch.no_grad():
        return model.eval()(x).argmax(1)


def test_registered_and_interface(bimodel):
    assert "bimodel-mismatch" in defenses.names()
    assert bimodel.is_detector
    assert set(bimodel.modules()) == {"model_a", "model_b"}
    assert bimodel.surface_names() == ["deployed", "model_a", "model_b"]
    assert bimodel.deployed() is bimodel.modules()["model_a"]
    assert bimodel.surfaces()["model_b"] is bimodel.modules()["model_b"]
    with pytest.raises(ValueError):
        defenses.get("bimodel-mismatch").build(classifier="no-such-classifier")
    assert type(make_classifier("random-forest")).__name__ == "RandomForestClassifier"  # a registry name
    with pytest.raises(ValueError):  # an import path is not a classifier name: nothing is imported
        make_classifier("sklearn.ensemble.GradientBoostingClassifier")


def test_models_are_trained(bimodel, data):
    for model in bimodel.models():
        assert (_predict(model, data.test_x) == data.test_y).float().mean() > 0.8


def test_features_are_two_softmaxes(bimodel, data):
    f = bimodel.features(data.test_x[:7])
    assert f.shape == (7, 2 * data.num_classes)
    np.testing.assert_allclose(f[:, :10].sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(f[:, 10:].sum(1), 1, atol=1e-5)


def test_detector_data_follows_the_paper(bimodel, data, fgsm_data):
    d, x, y = fgsm_data, data.test_x, data.test_y
    n = len(y)
    chosen = d.attacked_model_index >= 0
    # The coin flips: about half chosen for an attack, and about half of those on each model (99.9% bounds).
    lo, hi = binom.ppf([0.0005, 0.9995], n, 0.5)
    assert lo <= chosen.sum() <= hi
    lo, hi = binom.ppf([0.0005, 0.9995], chosen.sum(), 0.5)
    assert lo <= (d.attacked_model_index == 0).sum() <= hi
    # Only chosen images are adversarial; images kept clean are bitwise the clean ones.
    assert not d.is_adv[~chosen].any()
    assert torch.equal(d.x[~d.is_adv], x[~d.is_adv])
    assert d.is_adv.sum() > 0.3 * chosen.sum()
    models = bimodel.models()
    for m in (0, 1):
        idx = np.flatnonzero(d.attacked_model_index == m)
        clean_pred = _predict(models[m], x[idx])
        # Clean-misclassified images stay clean with label 0.
        wrong = idx[(clean_pred != y[idx]).numpy()]
        assert not d.is_adv[wrong].any()
        # The chosen model errs on every adversarial image it was attacked on, within the budget used.
        adv = idx[d.is_adv[idx]]
        assert (_predict(models[m], d.x[adv]) != y[adv]).all()
        linf = (d.x[adv] - x[adv]).flatten(1).abs().max(1).values.numpy()
        assert (linf <= d.budget_used[adv] + 1e-6).all()
    assert set(np.unique(d.budget_used[d.is_adv])) <= set(FGSM_BUDGETS)
    assert np.isnan(d.budget_used[~d.is_adv]).all() and np.isnan(d.mse[~d.is_adv]).all()
    assert d.success_rate == pytest.approx(d.is_adv.sum() / d.attempted)
    assert d.mse_mean == pytest.approx(d.mse[d.is_adv].mean())


def test_minimal_budget_by_hand(bimodel, data, fgsm_data):
    from bench.attacks import get_attack

    d = fgsm_data
    # One image that needed more than the smallest budget: no smaller budget fools its model, its budget does.
    i = int(np.flatnonzero(d.is_adv & (d.budget_used > FGSM_BUDGETS[0]))[0])
    model = bimodel.models()[d.attacked_model_index[i]]
    x, y = data.test_x[i:i + 1], data.test_y[i:i + 1]
    attack = get_attack("fgsm", {})
    for budget in FGSM_BUDGETS:
        fooled = bool(_predict(model, attack.run(model, x, y, budget, seed=0)) != y)
        if budget < d.budget_used[i]:
            assert not fooled, budget
        else:
            assert fooled and budget == d.budget_used[i]
            break


def test_fgsm_detector_cross_validation(bimodel, fgsm_data):
    result = cross_validate(bimodel.features(fgsm_data.x), fgsm_data.labels, bimodel.make_classifier(), folds=3)
    assert result["accuracy_mean"] >= 0.7
    assert result["roc_auc_mean"] >= 0.75
    assert 0 <= result["detection_rate_mean"] <= 1 and result["f1_mean"] > 0.5
    # accuracy = share_adv * TPR + share_clean * (1 - FPR); stratified folds keep the shares equal
    share = fgsm_data.labels.mean()
    expected = share * result["detection_rate_mean"] + (1 - share) * (1 - result["false_positive_rate_mean"])
    assert result["accuracy_mean"] == pytest.approx(expected, abs=0.01)
    assert 0 <= result["clean_fpr_mean"] <= 0.2 and 0 <= result["tpr_at_fpr_mean"] <= 1


def test_tpr_at_fpr_threshold_is_set_on_clean_scores():
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(0, 1, 200), rng.normal(2, 1, 300)
    for fpr in (0.01, 0.05, 0.1, 0.25):
        result = tpr_at_fpr(adv, clean, fpr)
        assert result.clean_fpr <= fpr
        assert result.clean_fpr >= fpr - 2 / len(clean)  # the quantile, not just any high threshold
        assert result.tpr == pytest.approx((adv > result.threshold).mean())
    assert tpr_at_fpr(adv, clean, 0.05).tpr > 0.5


def test_mismatch_detector_fit_detect(bimodel, fgsm_data):
    det = MismatchDetector(bimodel)
    det.fit(fgsm_data.x.numpy(), fgsm_data.labels)
    report, is_adv = det.detect(fgsm_data.x.numpy()[:50])
    assert is_adv.dtype == bool and is_adv.shape == (50,)
    np.testing.assert_allclose(report["scores"], det.score(fgsm_data.x[:50]))
    # Scores are positive-class scores: a threshold on them flags the same as the classifier's default.
    assert ((report["scores"] > 0) == is_adv).all()
    threshold = float(np.quantile(report["scores"], 0.8))
    det.set_params(threshold=threshold)
    _, flagged = det.detect(fgsm_data.x[:50])
    assert (flagged == (report["scores"] > threshold)).all()


def test_cross_attack_matrix(bimodel, data, fgsm_data):
    bim = build_detector_data(bimodel.models(), data.test_x, data.test_y, "bim", {"steps": 3},
                              [0.05, 0.1, 0.2, 0.3], seed=1)
    by_attack = {"fgsm": (bimodel.features(fgsm_data.x), fgsm_data.labels),
                 "bim": (bimodel.features(bim.x), bim.labels)}
    matrix = cross_attack_matrix(by_attack, bimodel.make_classifier(), seed=0)
    assert matrix.shape == (2, 2) and list(matrix.index) == list(matrix.columns) == ["fgsm", "bim"]
    assert (np.diag(matrix.to_numpy()) > 0.65).all()
    assert matrix.notna().all().all()


@pytest.mark.parametrize("window", [2, 3])
def test_median_smoothing_matches_scipy(window):
    x = torch.rand(2, 3, 7, 6, generator=torch.Generator().manual_seed(window))
    expected = scipy.ndimage.median_filter(x.numpy(), size=(1, 1, window, window), mode="reflect")
    np.testing.assert_array_equal(median_smooth(x, window).numpy(), expected)


def test_feature_squeezing_clean_fpr(bimodel, data):
    fpr = 0.1
    fs = FeatureSqueezing(bimodel.deployed(), bits=2, median_window=2, fpr=fpr)
    fs.fit(data.train_x[:300])
    _, flagged_fit = fs.detect(data.train_x[:300])
    assert flagged_fit.mean() <= fpr
    report, flagged = fs.detect(data.test_x)
    assert flagged.shape == (len(data.test_x),) and flagged.dtype == bool
    # On held-out clean images the rate is near the target (binomial 99.9% bounds, n = 360).
    lo, hi = binom.ppf([0.0005, 0.9995], len(flagged), fpr) / len(flagged)
    assert lo - 0.03 <= flagged.mean() <= hi + 0.03
    assert (report["scores"] >= 0).all() and (report["scores"] <= 2 + 1e-6).all()
