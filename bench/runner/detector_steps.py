"""The detector track's task steps: detector-data, detect and adaptive (Monteiro et al. 2019).

Registered like the robustness steps (``bench.runner.steps``); their rows go to the store's
``detection_results`` table. The trained detector (a ``bench.defense.DetectorDefense``: its models)
comes from the train task's checkpoint; its binary classifier is refitted from the stored detector
data where it is needed (seeded, seconds), so no checkpoint holds a pickle.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from ..data import DatasetSplits
from ..defense import DetectorDefense
from ..errors import TaskFailed
from ..plan import Task
from ..plan.specs import AdaptiveSpec, DetectorDataSpec, DetectSpec, ThresholdRule
from ..attacks.noise import NOISE_BASELINES as NOISE
from ..registry import attacks, baseline_detectors, task_steps
from ..store import Store
from ..training import predict
from .context import RunContext, eval_indices, task_seed, trained_defense


def _trained_detector(train: Task, ctx: RunContext) -> tuple[DetectorDefense, DatasetSplits]:
    defense, data = trained_defense(train, ctx)
    if not isinstance(defense, DetectorDefense):
        raise TaskFailed(f"{train.spec.defense.name!r} is not a detector (bench.defense.DetectorDefense)")
    return defense, data


def _detection_row(task: Task, train: Task, **fields: Any) -> dict[str, Any]:
    """A ``detection_results`` row's identity (the task, its dataset, detector and seed), and ``fields``."""
    about, detector = task.about, train.spec.defense
    return {"task_key": task.key, "dataset": about.dataset, "detector": about.detector, "seed": about.seed,
            "detector_name": detector.name, "detector_config": json.dumps(detector.payload(), sort_keys=True),
            **fields}


@task_steps.register("detector-data", version=DetectorDataSpec.version, table="detection_results", artifact=True)
def run_detector_data(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """One attack's detector data (Sec. III-A) on a trained detector's two models; its Table II row."""
    from ..detection.data import build_detector_data

    spec: DetectorDataSpec = task.spec
    about = task.about
    train = upstream[spec.model]
    defense, data = _trained_detector(train, ctx)
    seed = task_seed(task)  # an independent random subset per attack (the paper's protocol)
    if spec.images > len(data.train_y):
        raise TaskFailed(f"detector {about.detector}: images: {spec.images} requested, but the training "
                         f"split of {about.dataset} has {len(data.train_y)}; lower images")
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
    indices = order[: spec.images].sort().values
    built = build_detector_data(defense.models(), data.train_x[indices], data.train_y[indices],
                                spec.attack.name, spec.attack.params, spec.budgets, seed=seed,
                                device=ctx.device, batch_size=ctx.batch_size)
    store.save_artifact(task.key, {
        "x": built.x, "indices": indices, "is_adv": torch.from_numpy(built.is_adv),
        "attacked_model_index": torch.from_numpy(built.attacked_model_index),
        "budget_used": torch.from_numpy(built.budget_used), "mse": torch.from_numpy(built.mse)})
    return [_detection_row(
        task, train, method="", evaluation="attack-data", train_attack=about.attack,
        test_attack=about.attack, attack_config=json.dumps(spec.attack.payload(), sort_keys=True),
        n=built.attempted, attack_success_rate=built.success_rate, mse_mean=built.mse_mean,
        adversarial_fraction=float(built.is_adv.mean()))]


def _detection_method(task: Task, defense: DetectorDefense, ctx: RunContext):
    """(featurize, classifier factory) of the task's detection method: the detector defense's own
    features and binary classifier, or a baseline's score thresholded on clean data."""
    from ..detection.evaluation import ThresholdClassifier

    spec: DetectSpec = task.spec
    method, seed = spec.method, spec.seed
    if method is None:
        return (lambda x: defense.features(x, ctx.batch_size)), (lambda: defense.make_classifier(seed))
    baseline = baseline_detectors.get(method.name).build(defense.deployed(), **method.params)
    return (lambda x: baseline.score(x, ctx.batch_size)[:, None]), (lambda: ThresholdClassifier(baseline.fpr))


@task_steps.register("detect", version=DetectSpec.version, table="detection_results")
def run_detect(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """CV and the cross-attack matrix of one detection method (the detector or a baseline) on its data."""
    from ..detection.evaluation import cross_attack_matrix, cross_validate

    spec: DetectSpec = task.spec
    train = upstream[spec.model]
    defense, _ = _trained_detector(train, ctx)
    features, labels, image_ids = {}, {}, {}
    featurize, make = _detection_method(task, defense, ctx)
    for label, key in spec.data.items():
        built = store.load_artifact(key)
        features[label] = featurize(built["x"])
        labels[label] = built["is_adv"].numpy().astype(int)
        image_ids[label] = built["indices"].numpy()
    common = {"method": task.about.method}
    rows: list[dict[str, Any]] = []
    for label in features:
        cv = cross_validate(features[label], labels[label], make, folds=spec.folds, seed=spec.seed, fpr=spec.fpr)
        rows.append(_detection_row(
            task, train, **common, evaluation="cv", train_attack=label, test_attack=label, n=cv["n"],
            folds=cv["folds"], target_fpr=spec.fpr, clean_fpr=cv["clean_fpr_mean"],
            **{f"{m}{suffix}": cv[f"{m}_{stat}"]
               for m in ("accuracy", "f1", "roc_auc", "detection_rate", "false_positive_rate", "tpr_at_fpr")
               for suffix, stat in (("", "mean"), ("_std", "std"))}))
    matrix = cross_attack_matrix({k: (features[k], labels[k]) for k in features}, make, seed=spec.seed,
                                 image_ids=image_ids, train_attacks=spec.train_attacks,
                                 test_attacks=spec.test_attacks)
    for a in matrix.index:
        for b in matrix.columns:
            rows.append(_detection_row(task, train, **common, evaluation="cross", train_attack=a, test_attack=b,
                                       accuracy=None if np.isnan(matrix.loc[a, b]) else float(matrix.loc[a, b])))
    for row in rows:
        row["key"] = f"{task.key}:{row['evaluation']}:{row['train_attack']}:{row['test_attack']}"
    return rows


@task_steps.register("adaptive", version=AdaptiveSpec.version, table="detection_results")
def run_adaptive(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """The detector-aware attack next to the same attack on the guarded model alone.

    The detector is fitted on a stratified draw of ``detector_images`` examples pooled over the train
    attacks' detector data (a detector meant to meet every one of them), then folded into the guarded
    classifier. Counted on the attacked test images: robust accuracy of the guarded classifier (a
    rejected input counts as defended), of the model alone, and the detection rate (the fraction of
    the examples that fool the model alone that the detector flags).
    """
    from ..detection.adaptive import guarded_classifier, guarded_predictions
    from ..metrics import REJECTION_FIELDS, defended_mask, rejection_outcome, wilson_interval

    spec: AdaptiveSpec = task.spec
    about = task.about
    train = upstream[spec.model]
    defense, data = _trained_detector(train, ctx)
    seed = task_seed(task)
    pooled = [store.load_artifact(key) for key in dict.fromkeys(spec.fit_data)]
    x_pool = torch.cat([p["x"] for p in pooled])
    y_pool = np.concatenate([p["is_adv"].numpy() for p in pooled]).astype(int)
    if len(y_pool) > spec.detector_images:
        from sklearn.model_selection import train_test_split

        # Seeded by the suite seed, not the task: every attack of this detector meets the same fitted detector.
        keep, _ = train_test_split(np.arange(len(y_pool)), train_size=spec.detector_images,
                                   random_state=spec.seed, stratify=y_pool)
        x_pool, y_pool = x_pool[torch.from_numpy(np.sort(keep))], y_pool[np.sort(keep)]
    defense.fit_detector(x_pool, y_pool, seed=spec.seed)
    idx = eval_indices(data, spec.eval)
    threshold = _operating_threshold(defense, data, idx, spec.threshold, ctx)
    guarded = guarded_classifier(defense, threshold, features_from=x_pool, seed=spec.seed)  # x_pool: surrogate
    model = defense.deployed()
    reject = guarded.reject_class

    x, y = data.test_x[idx], data.test_y[idx]
    device = torch.device(ctx.device)
    pred_model_clean = predict(model, x, device=device, batch_size=ctx.batch_size)
    pred_guarded_clean = guarded_predictions(guarded, x, batch_size=ctx.batch_size, device=device)
    # The reject option counted as for a dustbin (one code path: bench.metrics): a rejected clean image is an
    # error, a rejected attacked one defended.
    clean = rejection_outcome(pred_guarded_clean.numpy(), y.numpy(), reject)
    attack_ref = spec.attack
    artifact: dict[str, torch.Tensor] = {"indices": idx}
    rows: list[dict[str, Any]] = []
    defended_by: dict[str, torch.Tensor] = {}
    # A soundness check's evidence (bench.checks) is the detector-aware run alone.
    for evaluation in ("adaptive",) if spec.check else ("non-adaptive", "adaptive"):
        params = dict(attack_ref.params)
        if evaluation == "adaptive":
            params["backend"] = "torch"  # the only backend that takes the guarded surface's own objective
        attack = NOISE[attack_ref.name](**params) if attack_ref.name in NOISE else \
            attacks.get(attack_ref.name).build(**params)
        if evaluation == "non-adaptive":
            x_adv = attack.run(model, x, y, spec.budget, batch_size=ctx.batch_size, device=ctx.device,
                               seed=seed).detach().cpu().float()
        else:
            x_adv = _sweep_detector_weights(attack, guarded, x, y, spec.detector_weights, spec.budget, ctx, seed)
        artifact[f"x_adv_{evaluation.replace('-', '_')}"] = x_adv
        pred_model = predict(model, x_adv, device=device, batch_size=ctx.batch_size)
        pred_guarded = guarded_predictions(guarded, x_adv, batch_size=ctx.batch_size, device=device)
        fooled_model = (pred_model != y) & (pred_model_clean == y)
        defended = defended_by[evaluation] = defended_mask(pred_guarded, y, reject)
        low, high = wilson_interval(int(defended.sum()), len(y))
        delta = (x_adv - x).flatten(1).double()
        rows.append(_detection_row(
            task, train, method=about.detector, evaluation=evaluation,
            train_attack="+".join(about.train_attacks), test_attack=about.attack,
            attack_config=json.dumps({**attack_ref.payload(), "params": params}, sort_keys=True), budget=spec.budget,
            n=len(y), detection_rate=float((pred_guarded[fooled_model] == reject).float().mean())
            if fooled_model.any() else None,
            attack_success_rate=float((~defended).float().mean()),
            mse_mean=float((delta[fooled_model] ** 2).mean(1).mean()) if fooled_model.any() else None,
            clean_acc=clean["acc_rate"], clean_rejected=clean["reject_rate"],
            **rejection_outcome(pred_guarded.numpy(), y.numpy(), reject),
            model_robust_acc=float((pred_model == y).float().mean()),
            model_clean_acc=float((pred_model_clean == y).float().mean()),
            robust_acc=float(defended.float().mean()), robust_ci_low=low, robust_ci_high=high,
            threshold=guarded.threshold, target_fpr=spec.threshold.fpr,
            key=f"{task.key}:{evaluation}"))
    if spec.check:
        store.save_artifact(task.key, artifact)
        return rows
    # An attacker who knows the detector keeps, per image, whichever of the two examples gets through.
    either = defended_by["non-adaptive"] & defended_by["adaptive"]
    low, high = wilson_interval(int(either.sum()), len(y))
    rows.append({**rows[-1], "evaluation": "worst-case", "key": f"{task.key}:worst-case", "detection_rate": None,
                 "mse_mean": None, "model_robust_acc": None, "attack_success_rate": float((~either).float().mean()),
                 # Acc. / Rej. / Err. belong to one attack's examples; the per-image choice has none of its own.
                 **dict.fromkeys(REJECTION_FIELDS),
                 "robust_acc": float(either.float().mean()), "robust_ci_low": low, "robust_ci_high": high})
    store.save_artifact(task.key, artifact)
    return rows


def _operating_threshold(defense: DetectorDefense, data: DatasetSplits, eval_idx: torch.Tensor, rule: ThresholdRule,
                         ctx: RunContext) -> float | None:
    """The detector's threshold for the guarded classifier: None (the binary classifier's own decision)
    or, for rule "fpr", the score that flags a fraction ``fpr`` of clean test images outside the attacked
    subset (clean data only, never seen by the detector or attacked)."""
    from ..detection.classifiers import positive_scores
    from ..detection.evaluation import clean_threshold

    if rule.fpr is None:  # the binary classifier's own decision
        return None
    held_out = torch.ones(len(data.test_y), dtype=torch.bool)
    held_out[eval_idx] = False
    if int(held_out.sum()) < 20:
        raise TaskFailed(f"adaptive_threshold: fpr needs clean test images outside the {len(eval_idx)} attacked ones; "
                         f"the test split has {len(data.test_y)}: lower the dataset's eval_size")
    scores = positive_scores(defense.detector(), defense.features(data.test_x[held_out], ctx.batch_size))
    return clean_threshold(scores, rule.fpr)


def _sweep_detector_weights(attack, guarded, x: torch.Tensor, y: torch.Tensor, weights: list[float], budget: float,
                            ctx: RunContext, seed: int) -> torch.Tensor:
    """The detector-aware attack at each detector weight in turn (one run if the attack ignores them);
    each image keeps its first example that is misclassified and not detected, else the last one."""
    from ..detection.adaptive import guarded_predictions

    x_adv, through = None, torch.zeros(len(y), dtype=torch.bool)
    for weight in weights or [guarded.detector_weight]:
        guarded.detector_weight = weight
        todo = ~through if x_adv is not None else torch.ones(len(y), dtype=torch.bool)
        out = attack.run(guarded, x[todo], y[todo], budget, batch_size=ctx.batch_size, device=ctx.device,
                         seed=seed).detach().cpu().float()
        x_adv = out if x_adv is None else x_adv.index_put((todo.nonzero().squeeze(1),), out)
        pred = guarded_predictions(guarded, x_adv, batch_size=ctx.batch_size, device=ctx.device)
        through = (pred != y) & (pred != guarded.reject_class)
        if through.all():
            break
    return x_adv
