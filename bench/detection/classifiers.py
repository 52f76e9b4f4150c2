"""The binary classifiers a detector trains: scikit-learn estimators by short name or import path,
and the one score every evaluation reads from them (``positive_scores``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import numpy as np

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


def estimator_factory(classifier_factory) -> Callable[[], Any]:
    """Accept an unfitted estimator (cloned for every fit) or a zero-argument callable."""
    if hasattr(classifier_factory, "fit"):
        from sklearn.base import clone

        return lambda: clone(classifier_factory)
    return classifier_factory
