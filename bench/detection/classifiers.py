"""The binary classifiers a detector trains, as a registry (``bench.registry.classifiers``), and the one
score every evaluation reads from them (``positive_scores``).

A detector's ``classifier`` is a registry name: the scikit-learn classifiers below by short name, or a
plugin's, registered through the ``advbench.classifiers`` entry-point group (an entry point naming a
factory ``fn(**params)`` or a class, either returning an unfitted estimator with ``fit`` and ``predict``,
registered under the entry point's name; or a module that registers its own). A suite names code to run
only where it says so (a pretrained ``factory``): validating a classifier's name looks it up and imports
nothing it says. The built-ins import scikit-learn when built, not when registered.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from ..registry import UnknownName, classifiers

# name -> (scikit-learn class, its defaults here, description). No probability=True: deprecated in
# scikit-learn 1.9 (removed in 1.11); scores come from decision_function, and AUC uses it too.
# classifier_params {"probability": true} still works.
_SKLEARN = {
    "svc": ("sklearn.svm.SVC", {"kernel": "rbf"}, "RBF support-vector machine (sklearn.svm.SVC), Monteiro et al.'s"),
    "logistic-regression": ("sklearn.linear_model.LogisticRegression", {"max_iter": 1000},
                            "logistic regression (sklearn.linear_model.LogisticRegression, max_iter 1000)"),
    "random-forest": ("sklearn.ensemble.RandomForestClassifier", {},
                      "random forest (sklearn.ensemble.RandomForestClassifier)"),
    "mlp": ("sklearn.neural_network.MLPClassifier", {"max_iter": 500},
            "multi-layer perceptron (sklearn.neural_network.MLPClassifier, max_iter 500)"),
}


def _sklearn_factory(path: str, defaults: dict[str, Any]) -> Callable[..., Any]:
    """A factory ``fn(**params)`` of the scikit-learn class at ``path`` (imported when called) with
    ``defaults`` under ``params``."""

    def factory(**params: Any) -> Any:
        module_name, _, class_name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(**{**defaults, **params})

    factory.__qualname__ = factory.__name__ = f"sklearn_{path.rpartition('.')[2]}"
    return factory


for _name, (_path, _defaults, _description) in _SKLEARN.items():
    classifiers.add(_name, _sklearn_factory(_path, _defaults), description=_description, sklearn_class=_path,
                    defaults=_defaults)


def make_classifier(name: str, params: dict[str, Any] | None = None, *, seed: int | None = 0):
    """An unfitted classifier registered as ``name`` in ``bench.registry.classifiers`` (``svc`` = RBF
    SVM, the paper's; ``logistic-regression``, ``random-forest``, ``mlp``; or a plugin's). ``params``
    override its defaults; ``seed`` sets ``random_state`` where the estimator has one and ``params`` do
    not. ``ValueError`` on an unknown name or a bad parameter."""
    try:
        entry = classifiers.get(name)
    except UnknownName as e:
        raise ValueError(str(e)) from None
    params = dict(params or {})
    try:
        estimator = entry.factory(**params)
    except TypeError as e:  # a keyword the estimator does not take
        raise ValueError(f"classifier {name!r}: {e}") from e
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
        raise ValueError(f"classifier {name!r} did not build a scikit-learn-style classifier (fit/predict), "
                         f"but {type(estimator).__name__}")
    if seed is not None and "random_state" not in params and callable(getattr(estimator, "get_params", None)) \
            and "random_state" in estimator.get_params(deep=False):
        estimator.set_params(random_state=seed)
    return estimator


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
