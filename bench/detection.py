"""Adversarial-example detection: detector data, evaluation, and detectors as ART ``EvasionDetector``s.

* ``build_detector_data``: Monteiro et al. 2019, Sec. III-A. Each image is kept clean (label 0) or
  attacked (label 1) by a seeded coin flip (p = 0.5); an attacked image is attacked white-box on one
  of the two models, chosen at random, with the smallest budget of the list that makes that model
  err. Images the chosen model already misclassifies when clean, or that no budget fools, stay
  clean with label 0. Also Table II's numbers: mean MSE over successful adversarial images and the
  success rate.
* ``cross_validate``: Table III (k-fold accuracy, F1, ROC AUC) plus the detection rate (TPR at the
  classifier's default threshold, Table IV); ``tpr_at_fpr``: TPR at a threshold set on clean
  validation scores only.
* ``cross_attack_matrix``: Figs. 5-6, train on attack A, test on attack B.
* ``MismatchDetector``: a fitted ``bimodel-mismatch`` defense and its binary classifier as an ART
  ``EvasionDetector``; ``FeatureSqueezing``: the Xu et al. 2018 baseline of Table IV (bit-depth
  reduction and median smoothing, max L1 distance between softmax outputs, threshold at a fixed
  clean false-positive rate).
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from art.defences.detector.evasion.evasion_detector import EvasionDetector
from torch import nn

from .attacks import get_attack
from .registry import baseline_detectors
from .training import predict

# --------------------------------------------------------------------------- binary classifiers

_CLASSIFIERS = {
    # No probability=True: deprecated in scikit-learn 1.9 (removed in 1.11); scores come from
    # decision_function, and AUC uses it too. classifier_params {"probability": true} still works.
    "svc": ("sklearn.svm.SVC", {"kernel": "rbf"}),
    "logistic-regression": ("sklearn.linear_model.LogisticRegression", {"max_iter": 1000}),
    "random-forest": ("sklearn.ensemble.RandomForestClassifier", {}),
    "mlp": ("sklearn.neural_network.MLPClassifier", {"max_iter": 500}),
}


def make_classifier(name: str, params: dict[str, Any] | None = None, *, seed: int | None = 0):
    """An unfitted scikit-learn classifier: a short name (``svc`` = RBF SVM, the paper's;
    ``logistic-regression``, ``random-forest``, ``mlp``) or a dotted import path such as
    ``sklearn.ensemble.GradientBoostingClassifier``. ``params`` override the defaults; ``seed`` sets
    ``random_state`` where the class has one and ``params`` do not. ``ValueError`` on a bad name or
    parameter."""
    path, defaults = _CLASSIFIERS.get(name, (name, {}))
    if "." not in path:
        raise ValueError(f"unknown classifier {name!r}; use one of {', '.join(_CLASSIFIERS)} "
                         "or a dotted import path such as sklearn.ensemble.GradientBoostingClassifier")
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"classifier {name!r} cannot be imported: {e}") from e
    if not (inspect.isclass(cls) and hasattr(cls, "fit") and hasattr(cls, "predict")):
        raise ValueError(f"classifier {name!r} is not a scikit-learn-style classifier (fit/predict)")
    kwargs = {**defaults, **(params or {})}
    accepted = inspect.signature(cls).parameters
    if seed is not None and "random_state" in accepted and "random_state" not in kwargs:
        kwargs["random_state"] = seed
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"classifier {name!r}: {e}") from e


def positive_scores(classifier, features: np.ndarray) -> np.ndarray:
    """The positive class's (attack's) decision score: ``decision_function`` where the classifier has
    one, else the predicted probability of class 1. Higher means more likely an attack."""
    if hasattr(classifier, "decision_function"):
        return np.asarray(classifier.decision_function(features), dtype=np.float64).reshape(-1)
    return np.asarray(classifier.predict_proba(features), dtype=np.float64)[:, 1]


def _factory(classifier_factory) -> Callable[[], Any]:
    """Accept an unfitted estimator (cloned for every fit) or a zero-argument callable."""
    if hasattr(classifier_factory, "fit"):
        from sklearn.base import clone

        return lambda: clone(classifier_factory)
    return classifier_factory


# --------------------------------------------------------------------------- detector data


@dataclass
class DetectorData:
    """Detector training data built by ``build_detector_data`` (all arrays of length N).

    ``x``: images (CPU float32 NCHW): the adversarial image where ``is_adv``, else the clean one.
    ``is_adv``: bool, the label (1 = attack).
    ``attacked_model_index``: the model the coin flips chose to attack (0 or 1), -1 for images kept
    clean by the first coin flip. Images chosen for an attack that stayed clean (the model erred on the
    clean image, or no budget fooled it) keep their index but have ``is_adv`` False.
    ``budget_used``: the smallest budget that fooled the chosen model (inf for an unbounded attack);
    NaN where ``is_adv`` is False.
    ``mse``: per-pixel mean squared error to the clean image; NaN where ``is_adv`` is False.
    ``success_rate``: successes / images attacked (chosen for an attack and classified correctly when
    clean by the chosen model); ``mse_mean``: mean ``mse`` over the successes (Table II).
    """

    x: torch.Tensor
    is_adv: np.ndarray
    attacked_model_index: np.ndarray
    budget_used: np.ndarray
    mse: np.ndarray
    attempted: int
    success_rate: float | None
    mse_mean: float | None

    @property
    def labels(self) -> np.ndarray:
        return self.is_adv.astype(int)


def _sorted_budgets(budgets: Sequence[float | None]) -> list[float | None]:
    if not budgets:
        raise ValueError("budgets must not be empty")
    numbers = sorted(float(b) for b in budgets if b is not None)
    if any(b is None for b in budgets):
        return [*numbers, None]  # unbounded: the last resort (a line-search attack's own minimal search)
    return numbers


def build_detector_data(models: tuple[nn.Module, nn.Module], x: torch.Tensor, y: torch.Tensor,
                        attack_name: str, attack_params: dict[str, Any] | None,
                        budgets: Sequence[float | None], *, seed: int = 0,
                        device: str | torch.device = "cpu", batch_size: int = 256) -> DetectorData:
    """Detector data following Monteiro et al. 2019, Sec. III-A (module docstring).

    Minimal-budget search, batched: budgets run in increasing order, each on the images no smaller
    budget has fooled yet; an image keeps the first budget at which the chosen model misclassifies it.
    A budget of ``None`` (line-search/minimization attacks, unbounded) runs last, once: the attack's
    own search is the minimal one.
    """
    if len(models) != 2:
        raise ValueError(f"need two models, got {len(models)}")
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    y = torch.as_tensor(y).detach().to("cpu", torch.long).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"got {len(x)} images but {len(y)} labels")
    device = torch.device(device)
    attack = get_attack(attack_name, attack_params)
    order = _sorted_budgets(budgets)

    n = len(x)
    rng = np.random.default_rng(seed)
    chosen = rng.random(n) < 0.5
    which = rng.integers(0, 2, size=n)
    attacked_model_index = np.where(chosen, which, -1)

    x_out = x.clone()
    is_adv = np.zeros(n, dtype=bool)
    budget_used = np.full(n, np.nan)
    attempted = 0
    for m, model in enumerate(models):
        was_training = model.training
        model.eval()  # dropout off: the model as deployed
        try:
            idx = np.flatnonzero(attacked_model_index == m)
            if len(idx) == 0:
                continue
            correct = (predict(model, x[idx], device=device, batch_size=batch_size) == y[idx]).numpy()
            unsolved = idx[correct]
            attempted += len(unsolved)
            for budget in order:
                if len(unsolved) == 0:
                    break
                adv = attack.run(model, x[unsolved], y[unsolved], budget, device=device, seed=seed,
                                 batch_size=batch_size)
                fooled = (predict(model, adv, device=device, batch_size=batch_size) != y[unsolved]).numpy()
                done = unsolved[fooled]
                x_out[done] = adv[fooled]
                is_adv[done] = True
                budget_used[done] = math.inf if budget is None else budget
                unsolved = unsolved[~fooled]
        finally:
            model.train(was_training)

    mse = np.full(n, np.nan)
    if is_adv.any():
        delta = (x_out[is_adv] - x[is_adv]).flatten(1).double()
        mse[is_adv] = (delta ** 2).mean(1).numpy()
    successes = int(is_adv.sum())
    return DetectorData(x=x_out, is_adv=is_adv, attacked_model_index=attacked_model_index,
                        budget_used=budget_used, mse=mse, attempted=attempted,
                        success_rate=successes / attempted if attempted else None,
                        mse_mean=float(mse[is_adv].mean()) if successes else None)


# --------------------------------------------------------------------------- evaluation


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
    make = _factory(classifier_factory)
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

    make = _factory(classifier_factory)
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


# --------------------------------------------------------------------------- detectors


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
