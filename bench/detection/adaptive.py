"""Detector-aware (adaptive) attacks on a classifier guarded by the bi-model mismatch detector.

Carlini & Wagner 2017 ("Adversarial examples are not easily detected", Sec. 4): fold the detector into
the classifier as an extra class K, "detected", and attack the combined (K+1)-class model. Here the
detector is a scikit-learn binary classifier on the concatenated softmax outputs of model_a and model_b
(Monteiro et al. 2019); ``differentiable_detector`` rebuilds its score in torch (exactly for SVMs and
linear models, else a fitted MLP surrogate), and ``GuardedClassifier`` is the attack surface::

    guarded = guarded_classifier(defense)             # a fitted bimodel-mismatch defense
    x_adv = get_attack("pgd-linf", {"backend": "torch"}).run(guarded, x, y, 0.1)
    pred = guarded_predictions(guarded, x_adv)        # in [0, K]; K = rejected by the detector

Success means model_a errs *and* the detector stays silent: the argmax of ``attack_logits`` (K columns,
"detected" merged into the true class) differs from y. The torch C&W backend takes its margin on those
logits; the torch FGSM/BIM/PGD backends ascend ``attack_loss`` (capped hinges on model_a's margin and,
weighted by ``detector_weight``, on the detector's) and keep each image's first successful iterate.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import eval_mode, model_device
from .classifiers import positive_scores

_KERNELS = ("rbf", "linear", "poly", "sigmoid")


# --------------------------------------------------------------------------- the detector in torch


class _KernelSVMScore(nn.Module):
    """sum_i dual_coef_i K(sv_i, f) + intercept: sklearn's binary ``decision_function`` (> 0: classes_[1])."""

    exact = True

    def __init__(self, svm) -> None:
        super().__init__()
        sv = svm.support_vectors_
        sv = sv.toarray() if hasattr(sv, "toarray") else sv  # fitted on a sparse matrix
        # float64 buffers: a sum over hundreds of support vectors stays within 1e-5 of sklearn's.
        self.register_buffer("sv", torch.as_tensor(np.asarray(sv), dtype=torch.float64))
        self.register_buffer("dual", torch.as_tensor(np.asarray(svm.dual_coef_).reshape(-1), dtype=torch.float64))
        self.register_buffer("intercept", torch.as_tensor(np.asarray(svm.intercept_).reshape(()), dtype=torch.float64))
        self.kernel, self.gamma = svm.kernel, float(svm._gamma)
        self.coef0, self.degree = float(svm.coef0), int(svm.degree)
        self.num_features = self.sv.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.to(self.sv.dtype)
        dot = f @ self.sv.T
        if self.kernel == "rbf":  # the expansion, not cdist: cdist's gradient is NaN at distance 0
            sq = (f * f).sum(1, keepdim=True) + (self.sv * self.sv).sum(1) - 2 * dot
            k = torch.exp(-self.gamma * sq.clamp_min(0))
        elif self.kernel == "linear":
            k = dot
        elif self.kernel == "poly":
            k = (self.gamma * dot + self.coef0) ** self.degree
        else:  # sigmoid
            k = torch.tanh(self.gamma * dot + self.coef0)
        return (k @ self.dual + self.intercept).to(features.dtype)


class _LinearScore(nn.Module):
    """f . coef + intercept: ``decision_function`` of a binary linear model (LogisticRegression, LinearSVC, ...)."""

    exact = True

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("coef", torch.as_tensor(coef.reshape(-1), dtype=torch.float64))
        self.register_buffer("intercept", torch.as_tensor(np.asarray(intercept).reshape(()), dtype=torch.float64))
        self.num_features = self.coef.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features.to(self.coef.dtype) @ self.coef + self.intercept).to(features.dtype)


class _SurrogateScore(nn.Module):
    """A small MLP regressed on the classifier's positive scores: gradients for trees, forests, pipelines..."""

    exact = False

    def __init__(self, num_features: int, hidden: int = 64) -> None:
        super().__init__()
        # tanh, not ReLU: smooth, so gradient attacks do not stall on flat pieces.
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).squeeze(1).mul(self.scale).add(self.mean).to(features.dtype)


def _fit_surrogate(classifier, features: np.ndarray, seed: int, steps: int = 400, lr: float = 1e-2) -> _SurrogateScore:
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    target = torch.as_tensor(positive_scores(classifier, np.asarray(features)), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global generator
        torch.manual_seed(seed)
        module = _SurrogateScore(x.shape[1])
    # Regress standardized scores (the net's scale is O(1)); the buffers map back to the classifier's scale.
    module.mean.fill_(target.mean())
    module.scale.fill_(target.std().clamp_min(1e-6))
    z = (target - module.mean) / module.scale
    opt = torch.optim.Adam(module.net.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):  # full batch: the detector's training set is small (thousands of rows)
            opt.zero_grad()
            F.mse_loss(module.net(x).squeeze(1), z).backward()
            opt.step()
    module.requires_grad_(False)
    return module.eval()


def differentiable_detector(classifier, features: np.ndarray | None = None, *, seed: int = 0) -> nn.Module:
    """A torch module mapping features (N, F) to ``positive_scores(classifier, features)`` (N,).

    Exact (``.exact`` True) for a fitted binary SVC/NuSVC with an rbf, linear, poly or sigmoid kernel and
    for binary linear models (``coef_``, ``intercept_``, ``decision_function``); any other classifier gets
    a seeded MLP surrogate regressed on its scores at ``features`` (required then; ValueError if None).
    Where ``features`` are given, an exact module is checked against the classifier on them.
    """
    module: nn.Module
    if getattr(classifier, "kernel", None) in _KERNELS and hasattr(classifier, "support_vectors_"):
        if np.asarray(classifier.dual_coef_).shape[0] != 1:
            raise ValueError(f"the detector must be a binary classifier; this SVM has {len(classifier.classes_)} "
                             "classes")
        module = _KernelSVMScore(classifier)
    elif (hasattr(classifier, "coef_") and hasattr(classifier, "intercept_")
          and hasattr(classifier, "decision_function") and not hasattr(classifier, "support_vectors_")):
        coef = np.asarray(classifier.coef_)
        if coef.ndim == 2 and coef.shape[0] != 1:
            raise ValueError(f"the detector must be a binary classifier; coef_ has shape {coef.shape}")
        module = _LinearScore(coef, np.asarray(classifier.intercept_))
    else:
        if features is None:
            raise ValueError(f"{type(classifier).__name__} has no closed form in torch: pass the features it was "
                             "fitted on to train a differentiable surrogate")
        return _fit_surrogate(classifier, features, seed)
    if features is not None and len(features):  # catches subclasses whose decision_function differs
        ours = module(torch.as_tensor(np.asarray(features), dtype=torch.float64)).numpy()
        theirs = positive_scores(classifier, np.asarray(features))
        if not np.allclose(ours, theirs, rtol=1e-5, atol=1e-5):
            raise ValueError(f"the torch version of {type(classifier).__name__} disagrees with its decision_function "
                             f"(max difference {np.abs(ours - theirs).max():.3g})")
    return module


def default_threshold(classifier) -> float:
    """The classifier's own boundary on ``positive_scores``: 0 for decision_function, 0.5 for probabilities."""
    return 0.0 if hasattr(classifier, "decision_function") else 0.5


# --------------------------------------------------------------------------- the guarded classifier


class GuardedClassifier(nn.Module):
    """model_a guarded by the mismatch detector, as K+1 logits: K classes and "rejected" (Carlini & Wagner 2017).

    The extra logit is max(Z) + s(x) - threshold, so it wins exactly when the detector fires (s > threshold).
    Attack backends that only see ``forward`` would treat rejection as a misclassification, hence
    ``attack_logits``/``attack_loss``, which only the plain PyTorch backends use.
    """

    def __init__(self, model_a: nn.Module, model_b: nn.Module, detector_score: nn.Module,
                 threshold: float = 0.0) -> None:
        super().__init__()
        self.model_a, self.model_b, self.detector_score = model_a, model_b, detector_score
        self.threshold = float(threshold)
        num_features = getattr(detector_score, "num_features", None)
        if num_features is None or num_features % 2:
            raise ValueError(f"the detector must read 2 * K features (two softmaxes), got {num_features}")
        self.num_classes = num_features // 2
        self.reject_class = self.num_classes

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """model_a's logits (N, K) and the detector's score (N,)."""
        za, zb = self.model_a(x), self.model_b(x)
        if za.shape[1] != self.num_classes or zb.shape[1] != self.num_classes:
            raise ValueError(f"the detector reads {self.num_classes} classes per model; "
                             f"the models give {za.shape[1]} and {zb.shape[1]}")
        return za, self.detector_score(torch.cat([F.softmax(za, dim=1), F.softmax(zb, dim=1)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, s = self.scores(x)
        extra = z.max(dim=1).values + (s.to(z.dtype) - self.threshold)
        return torch.cat([z, extra[:, None]], dim=1)

    def attack_logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, K): model_a's logits with column y replaced by max(Z_y, rejection logit): "detected" counts as
        correct, so argmax != y means misclassified by model_a and not detected."""
        logits = self.forward(x)
        z, extra = logits[:, :-1], logits[:, -1]
        idx = labels.reshape(-1, 1)
        merged = torch.maximum(z.gather(1, idx), extra[:, None])
        return z.scatter(1, idx, merged)

    # How far past each boundary the attack loss keeps pushing (logit units / detector-score units).
    attack_margin = 2.0
    # Weight of the detector's hinge against model_a's; like C&W's constant, the best value differs per
    # image, so the harness sweeps it (AdaptiveAttackEntry.detector_weights) and keeps what gets through.
    detector_weight = 1.0

    def attack_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss the torch gradient attacks ascend, summed over the batch: a hinge on model_a's margin
        (best other logit minus the true one) plus a hinge on the detector's (threshold minus score),
        each capped at ``attack_margin`` so that a goal already met stops pulling.

        Both terms act at every step. Cross-entropy or the margin of ``attack_logits`` (which only sees
        the detector once the image is misclassified) left adaptive PGD weaker than PGD on model_a alone
        (digits, eps 0.3, 10 steps: guarded robust accuracy 0.57-0.60 vs 0.47; with this loss 0.35).
        The detector term is scaled by ``detector_weight`` (mnist5k, eps 0.2, 40 steps: weight 3 left
        0.92, 1 left 0.74, 0.3 left 0.44; PGD on model_a alone 0.63).
        """
        logits, score = self.scores(x)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        cap = self.attack_margin
        return ((other - true).clamp(max=cap) + self.detector_weight * (self.threshold - score).clamp(max=cap)).sum()


@torch.no_grad()
def guarded_predictions(module: nn.Module, x: torch.Tensor, batch_size: int = 256,
                        device: str | torch.device = "cpu") -> torch.Tensor:
    """argmax of ``module``'s K+1 logits per image, on the CPU: a class in [0, K), or K = rejected."""
    with eval_mode(module):
        out = [module(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def guarded_classifier(defense, threshold: float | None = None, *, features_from: torch.Tensor | None = None,
                       seed: int = 0) -> GuardedClassifier:
    """The attack surface of a fitted ``bimodel-mismatch`` defense: model_a guarded by its detector.

    ``threshold`` None: the classifier's own boundary (``default_threshold``). ``features_from``: images
    whose features train the surrogate when the classifier has no closed form (e.g. the detector's
    training images); unused otherwise.
    """
    model_a, model_b = defense.models()
    classifier = defense.detector()
    features = None if features_from is None else defense.features(features_from)
    score = differentiable_detector(classifier, features, seed=seed)
    threshold = default_threshold(classifier) if threshold is None else threshold
    return GuardedClassifier(model_a, model_b, score.to(model_device(model_a)), threshold).eval()
