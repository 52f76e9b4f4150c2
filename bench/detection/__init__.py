"""The detector track (Monteiro et al. 2019): detector data, its evaluation, baseline detectors, and
the detector-aware attack. Where each change goes: docs/architecture.md.

* ``data``: ``build_detector_data`` (Sec. III-A) and ``DetectorData``;
* ``evaluation``: ``cross_validate`` (Table III/IV), ``tpr_at_fpr``, ``cross_attack_matrix`` (Figs. 5-6);
* ``classifiers``: the detector's scikit-learn classifier (``make_classifier``) and ``positive_scores``;
* ``baselines``: ``MismatchDetector`` and ``FeatureSqueezing`` as ART ``EvasionDetector``s;
* ``adaptive``: the detector folded into the classifier as an extra class (``guarded_classifier``).

A detector itself is a defense: ``bench.defense.DetectorDefense`` (e.g. ``defenses/bimodel_detector.py``).
The task steps that drive all of this are in ``bench.runner.detector_steps``.
"""

from .baselines import FeatureSqueezing, MismatchDetector, feature_squeezing, median_smooth, reduce_bit_depth
from .classifiers import make_classifier, positive_scores
from .data import DetectorData, build_detector_data
from .evaluation import ThresholdClassifier, TprAtFpr, clean_threshold, cross_attack_matrix, cross_validate, tpr_at_fpr

__all__ = ["DetectorData", "FeatureSqueezing", "MismatchDetector", "ThresholdClassifier", "TprAtFpr",
           "build_detector_data", "clean_threshold", "cross_attack_matrix", "cross_validate", "feature_squeezing",
           "make_classifier", "median_smooth", "positive_scores", "reduce_bit_depth", "tpr_at_fpr"]
