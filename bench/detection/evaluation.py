"""Evaluating a detector on detector data (Monteiro et al. 2019).

* ``cross_validate``: Table III (k-fold accuracy, F1, ROC AUC) plus the detection rate (TPR at the
  classifier's default threshold, Table IV); ``tpr_at_fpr``: TPR at a threshold set on clean
  validation scores only.
* ``cross_attack_matrix``: Figs. 5-6, train on attack A, test on attack B.
* ``ThresholdClassifier``: a score-and-threshold detector (a baseline) as a classifier, so it goes
  through the same evaluation.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .classifiers import estimator_factory, positive_scores


def cross_validate(features: np.ndarray, labels: np.ndarray, classifier_factory, folds: int = 10,
                   seed: int = 0, fpr: float = 0.05) -> dict[str, float]:
    """Stratified k-fold CV of a binary detector: mean and std over folds of accuracy, F1, ROC AUC
    (Table III), the detection rate (TPR = recall of the attack class at the classifier's own
    threshold, Table IV) with the false-positive rate that threshold gives on clean images, and the
    TPR at a fixed false-positive rate ``fpr``.

    The fixed-FPR threshold uses clean data only: in each fold the held-out clean examples are split
    in two (seeded); one half sets the threshold (``clean_threshold``), the other measures the FPR
    it actually gives (``clean_fpr``), and TPR is counted on the fold's held-out attacks.
    ``classifier_factory``: an unfitted estimator (cloned per fold) or a callable returning one.
    """
    from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    features = np.asarray(features)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if np.bincount(labels, minlength=2).min() < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} clean and {folds} adversarial "
                         f"examples; got {np.bincount(labels, minlength=2).tolist()} (clean, adversarial)")
    make = estimator_factory(classifier_factory)
    rng = np.random.default_rng(seed)
    per_fold: dict[str, list[float]] = {k: [] for k in ("accuracy", "f1", "roc_auc", "detection_rate",
                                                         "false_positive_rate", "tpr_at_fpr", "clean_fpr")}
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in cv.split(features, labels):
        clf = make().fit(features[train], labels[train])
        predicted = np.asarray(clf.predict(features[test])).astype(int)
        scores = positive_scores(clf, features[test])
        truth = labels[test]
        per_fold["accuracy"].append(accuracy_score(truth, predicted))
        per_fold["f1"].append(f1_score(truth, predicted, zero_division=0.0))
        per_fold["roc_auc"].append(roc_auc_score(truth, scores))
        per_fold["detection_rate"].append(recall_score(truth, predicted, zero_division=0.0))
        per_fold["false_positive_rate"].append(float(predicted[truth == 0].mean()))
        clean = rng.permutation(np.flatnonzero(truth == 0))
        half = len(clean) // 2
        at_fpr = tpr_at_fpr(scores[truth == 1], scores[clean[:half]], fpr)
        per_fold["tpr_at_fpr"].append(at_fpr.tpr)
        per_fold["clean_fpr"].append(float((scores[clean[half:]] > at_fpr.threshold).mean()))
    out: dict[str, float] = {"n": int(len(labels)), "folds": folds, "fpr": fpr}
    for name, values in per_fold.items():
        out[f"{name}_mean"] = float(np.mean(values))
        out[f"{name}_std"] = float(np.std(values))
    return out


class TprAtFpr(NamedTuple):
    tpr: float           # fraction of adversarial scores above the threshold
    threshold: float     # flag an input as adversarial when its score > threshold
    clean_fpr: float     # fraction of the clean validation scores above it (<= the target)


def clean_threshold(scores_clean: np.ndarray, fpr: float) -> float:
    """The (1 - fpr) quantile of clean scores (an observed score): at most a fraction ``fpr`` of
    them lie strictly above it."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    scores_clean = np.asarray(scores_clean, dtype=np.float64).reshape(-1)
    if scores_clean.size == 0:
        raise ValueError("no clean scores to choose a threshold on")
    return float(np.quantile(scores_clean, 1 - fpr, method="higher"))


def tpr_at_fpr(scores_adv: np.ndarray, scores_clean_val: np.ndarray, fpr: float = 0.05) -> TprAtFpr:
    """TPR on adversarial scores at the threshold chosen on clean validation scores only."""
    threshold = clean_threshold(scores_clean_val, fpr)
    scores_adv = np.asarray(scores_adv, dtype=np.float64).reshape(-1)
    clean = np.asarray(scores_clean_val, dtype=np.float64).reshape(-1)
    return TprAtFpr(tpr=float((scores_adv > threshold).mean()) if scores_adv.size else float("nan"),
                    threshold=threshold, clean_fpr=float((clean > threshold).mean()))


def cross_attack_matrix(data_by_attack: dict[str, tuple[np.ndarray, np.ndarray]], classifier_factory,
                        seed: int = 0, test_fraction: float = 0.3,
                        image_ids: dict[str, np.ndarray] | None = None,
                        train_attacks: Sequence[str] | None = None,
                        test_attacks: Sequence[str] | None = None) -> pd.DataFrame:
    """Generalization across attacks (Figs. 5-6): accuracy of a detector trained on attack A (rows)
    and tested on attack B (columns).

    Every dataset is split once (stratified, seeded) into a training and a held-out part; the
    detector trains on A's training part and is tested on B's held-out part, so the diagonal is a
    held-out accuracy and every column is measured on the same images. With ``image_ids`` (the source
    image of every row, e.g. its training-split index), B's held-out rows whose image is in A's
    training part are left out of cell (A, B): the detector never sees a test image, clean or
    attacked, during training. ``train_attacks``/``test_attacks`` select rows/columns (default all).
    """
    from sklearn.model_selection import train_test_split

    make = estimator_factory(classifier_factory)
    splits = {}
    for name, (features, labels) in data_by_attack.items():
        labels = np.asarray(labels).astype(int).reshape(-1)
        ids = np.arange(len(labels)) if image_ids is None else np.asarray(image_ids[name])
        splits[name] = train_test_split(np.asarray(features), labels, ids, test_size=test_fraction,
                                        random_state=seed, stratify=labels)
    rows = list(train_attacks or data_by_attack)
    columns = list(test_attacks or data_by_attack)
    matrix = pd.DataFrame(np.nan, index=pd.Index(rows, name="train"), columns=pd.Index(columns, name="test"))
    for a in rows:
        fa, _, la, _, ids_a, _ = splits[a]
        clf = make().fit(fa, la)
        for b in columns:
            _, fb, _, lb, _, ids_b = splits[b]
            unseen = ~np.isin(ids_b, ids_a) if image_ids is not None else np.ones(len(lb), dtype=bool)
            if unseen.any():
                matrix.loc[a, b] = float((clf.predict(fb[unseen]) == lb[unseen]).mean())
    return matrix


class ThresholdClassifier:
    """A scikit-learn-style binary classifier on one score column: ``fit`` sets the threshold on the
    clean rows only (label 0) so that a fraction ``fpr`` of them lies above it; ``decision_function``
    is score minus threshold. Lets a score-and-threshold detector (feature squeezing) go through the
    same cross-validation and cross-attack evaluation as a trained classifier."""

    def __init__(self, fpr: float = 0.05):
        self.fpr = fpr

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"fpr": self.fpr}

    def set_params(self, **params) -> "ThresholdClassifier":
        self.fpr = params.get("fpr", self.fpr)
        return self

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "ThresholdClassifier":
        scores = np.asarray(features, dtype=np.float64)[:, 0]
        self.threshold_ = clean_threshold(scores[np.asarray(labels).reshape(-1) == 0], self.fpr)
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64)[:, 0] - self.threshold_

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (self.decision_function(features) > 0).astype(int)
