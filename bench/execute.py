"""Executing a plan: the task code (``run_task``) and the executors that drive it.

``run_task`` does one task and records it in the store; it does not know which
executor called it. ``LocalExecutor`` runs tasks in order in this process;
``RayExecutor`` (in ``bench.ray_executor``) hands the same calls to Ray.
A task that raises is recorded as failed with its error, the tasks that need
its output are skipped, and the others go on.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .data import DataContext, DatasetSplits, load_dataset
from .defense import Defense
from .errors import TaskFailed
from .metrics import cell_metrics
from .plan import Plan, Task
from .provenance import git_commit, package_versions
from .registry import attacks, defenses
from .store import Store, load_artifact, now
from .training import predict


@dataclass(frozen=True)
class RunContext:
    store_dir: Path
    data: DataContext
    device: str
    batch_size: int = 256
    progress: bool = True
    suite: str = ""

    def provenance(self) -> dict[str, Any]:
        return {"suite": self.suite, "versions": package_versions(), "git_commit": git_commit()}


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        from .errors import UserError

        raise UserError("--device cuda: no CUDA device is visible to PyTorch on this machine")
    return requested


# ---- the steps ---------------------------------------------------------------------------------

def _dataset(cfg: dict[str, Any], ctx: RunContext) -> DatasetSplits:
    return load_dataset(cfg["name"], cfg["params"], ctx.data, train_size=cfg["train_size"],
                        test_size=cfg["test_size"], seed=cfg["subset_seed"])


def _eval_indices(data: DatasetSplits, eval_cfg: dict[str, Any]) -> torch.Tensor:
    """The attacked test examples: the same seeded subset for every attack, so per-example
    worst cases over attacks line up."""
    generator = torch.Generator().manual_seed(eval_cfg["dataset"]["subset_seed"])
    order = torch.randperm(len(data.test_y), generator=generator)
    return order[: eval_cfg["eval_size"]].sort().values


def _build_defense(train: Task, ctx: RunContext) -> tuple[Defense, DatasetSplits]:
    cfg = train.config
    data = _dataset(cfg["dataset"], ctx)
    defense = defenses.get(cfg["defense"]["name"]).build(**cfg["defense"]["params"])
    defense.setup(data.input_spec(), seed=cfg["seed"], device=torch.device(ctx.device))
    return defense, data


@lru_cache(maxsize=8)
def _trained_defense(train_key: str, train_json: str, ctx: RunContext) -> tuple[Defense, DatasetSplits]:
    """A trained defense restored from its checkpoint; cached, since many tasks score the same one."""
    train = Task("train", train_key, "", json.loads(train_json), [])
    defense, data = _build_defense(train, ctx)
    defense.load_state_dict(load_artifact(ctx.store_dir, train_key))
    return defense, data


def trained_defense(train: Task, ctx: RunContext) -> tuple[Defense, DatasetSplits]:
    return _trained_defense(train.key, json.dumps(train.config, sort_keys=True), ctx)


def _run_train(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> dict | None:
    defense, data = _build_defense(task, ctx)
    defense.fit(data, seed=task.config["seed"], progress=ctx.progress)
    store.save_artifact(task.key, defense.state_dict())
    return None


def _run_craft(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> dict | None:
    cfg = task.config
    defense, data = trained_defense(upstream[task.deps[0]], ctx)
    idx = _eval_indices(data, cfg["eval"])
    x, y = data.test_x[idx], data.test_y[idx]
    attack = attacks.get(cfg["attack"]["name"]).build(**cfg["attack"]["params"])
    model = defense.surface(cfg["surface"])
    # Seed from the key: reproducible, and different for every cell.
    seed = int(task.key[:8], 16)
    targets = attack.make_targets(model, x, y, seed=seed)
    x_adv = attack.run(model, x, y, cfg["budget"], targets=targets, batch_size=ctx.batch_size,
                       device=ctx.device, seed=seed).detach().cpu().float()
    if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
        raise TaskFailed(f"attack returned {tuple(x_adv.shape)} for inputs {tuple(x.shape)} or non-finite values")
    artifact = {"x_adv": x_adv, "indices": idx}
    if targets is not None:
        artifact["targets"] = targets.cpu()
    store.save_artifact(task.key, artifact)
    return None


def _run_score(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> dict | None:
    train = upstream[task.deps[0]]
    defense, data = trained_defense(train, ctx)
    info = task.info
    evaluated_on = info.get("evaluated_on", "deployed")
    scorer = defense.surface(evaluated_on)
    device = torch.device(ctx.device)
    row: dict[str, Any] = {
        "dataset": info["dataset"], "defense": info["defense"], "defense_name": train.config["defense"]["name"],
        "defense_config": json.dumps(train.config["defense"], sort_keys=True), "seed": info["seed"],
        "evaluated_on": evaluated_on,
    }
    if len(task.deps) == 1:  # clean accuracy on the whole test split
        x, y = data.test_x, data.test_y
        x_adv, targets, craft_time = x, None, 0.0
        row.update(attack="none", attack_config="{}", threat_model="none", surface="", source="",
                   budget_param="", budget=None)
    else:
        craft = upstream[task.deps[1]]
        crafted = store.load_artifact(craft.key)
        x, y = data.test_x[crafted["indices"]], data.test_y[crafted["indices"]]
        x_adv, targets = crafted["x_adv"], crafted.get("targets")
        craft_time = (store.task(craft.key) or {}).get("wall_time_s") or 0.0
        attack_cls = attacks.get(craft.config["attack"]["name"]).factory
        row.update(attack=info["attack"], attack_config=json.dumps(craft.config["attack"], sort_keys=True),
                   threat_model=attack_cls.threat_model, surface=info["surface"], source=info["source"],
                   budget_param=attack_cls.budget_param, budget=craft.config["budget"])
    pred_clean = predict(scorer, x, device=device, batch_size=ctx.batch_size)
    pred_adv = pred_clean if x_adv is x else predict(scorer, x_adv, device=device, batch_size=ctx.batch_size)
    metrics = cell_metrics(x.numpy(), x_adv.numpy(), y.numpy(), pred_clean.numpy(), pred_adv.numpy(),
                           None if targets is None else targets.numpy())
    row.update(metrics.as_dict())
    row["correct"] = (pred_adv == y).numpy()
    members = defense.member_models() if evaluated_on == "deployed" else []
    if len(members) >= 2:  # diversity of the members' votes on the scored inputs
        from .diversity import member_agreement

        row["diversity_kappa"] = member_agreement(members, x_adv, y, device)
    row["craft_time_s"] = craft_time
    return row


class DetectionRows(list):
    """What a detector step returns: rows for the store's detection_results table."""


def _detection_row(task: Task, train: Task, **fields: Any) -> dict[str, Any]:
    info = task.info
    return {"dataset": info["dataset"], "detector": info["detector"], "seed": info["seed"],
            "detector_name": train.config["defense"]["name"],
            "detector_config": json.dumps(train.config["defense"], sort_keys=True), **fields}


def _run_detector_data(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> DetectionRows:
    from .detection import build_detector_data

    cfg = task.config
    train = upstream[task.deps[0]]
    defense, data = trained_defense(train, ctx)
    seed = int(task.key[:8], 16)  # an independent random subset per attack (the paper's protocol)
    if cfg["images"] > len(data.train_y):
        raise TaskFailed(f"detector {task.info['detector']}: images: {cfg['images']} requested, but the training "
                         f"split of {task.info['dataset']} has {len(data.train_y)}; lower images")
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
    indices = order[: cfg["images"]].sort().values
    built = build_detector_data(defense.models(), data.train_x[indices], data.train_y[indices],
                                cfg["attack"]["name"], cfg["attack"]["params"], cfg["budgets"], seed=seed,
                                device=ctx.device, batch_size=ctx.batch_size)
    store.save_artifact(task.key, {
        "x": built.x, "indices": indices, "is_adv": torch.from_numpy(built.is_adv),
        "attacked_model_index": torch.from_numpy(built.attacked_model_index),
        "budget_used": torch.from_numpy(built.budget_used), "mse": torch.from_numpy(built.mse)})
    return DetectionRows([_detection_row(
        task, train, method="", evaluation="attack-data", train_attack=task.info["attack"],
        test_attack=task.info["attack"], attack_config=json.dumps(cfg["attack"], sort_keys=True),
        n=built.attempted, attack_success_rate=built.success_rate, mse_mean=built.mse_mean,
        adversarial_fraction=float(built.is_adv.mean()))])


def _detection_features(task: Task, defense: Defense, x: torch.Tensor, ctx: RunContext):
    """(features of x, classifier factory) of the task's detection method: the detector defense's own
    features and binary classifier, or a baseline's score thresholded on clean data."""
    from .detection import ThresholdClassifier
    from .registry import baseline_detectors

    method, seed = task.config["method"], task.config["seed"]
    if method is None:
        return defense.features(x, ctx.batch_size), lambda: defense.make_classifier(seed)
    baseline = baseline_detectors.get(method["name"]).build(defense.deployed(), **method["params"])
    return baseline.score(x, ctx.batch_size)[:, None], lambda: ThresholdClassifier(baseline.fpr)


def _run_detect(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> DetectionRows:
    from .detection import cross_attack_matrix, cross_validate

    cfg = task.config
    train = upstream[task.deps[0]]
    defense, _ = trained_defense(train, ctx)
    features, labels, image_ids = {}, {}, {}
    for label, key in cfg["data"].items():
        built = store.load_artifact(key)
        features[label], make = _detection_features(task, defense, built["x"], ctx)
        labels[label] = built["is_adv"].numpy().astype(int)
        image_ids[label] = built["indices"].numpy()
    common = {"method": task.info["method"]}
    rows = DetectionRows()
    for label in features:
        cv = cross_validate(features[label], labels[label], make, folds=cfg["folds"], seed=cfg["seed"],
                            fpr=cfg["fpr"])
        rows.append(_detection_row(
            task, train, **common, evaluation="cv", train_attack=label, test_attack=label, n=cv["n"],
            folds=cv["folds"], target_fpr=cfg["fpr"], clean_fpr=cv["clean_fpr_mean"],
            **{f"{m}{suffix}": cv[f"{m}_{stat}"] for m in ("accuracy", "f1", "roc_auc", "detection_rate", "tpr_at_fpr")
               for suffix, stat in (("", "mean"), ("_std", "std"))}))
    matrix = cross_attack_matrix({k: (features[k], labels[k]) for k in features}, make, seed=cfg["seed"],
                                 image_ids=image_ids, train_attacks=cfg["train_attacks"],
                                 test_attacks=cfg["test_attacks"])
    for a in matrix.index:
        for b in matrix.columns:
            rows.append(_detection_row(task, train, **common, evaluation="cross", train_attack=a, test_attack=b,
                                       accuracy=None if np.isnan(matrix.loc[a, b]) else float(matrix.loc[a, b])))
    for row in rows:
        row["key"] = f"{task.key}:{row['evaluation']}:{row['train_attack']}:{row['test_attack']}"
    return rows


def _run_adaptive(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> DetectionRows:
    """The detector-aware attack next to the same attack on the guarded model alone.

    The detector is fitted on a stratified draw of ``detector_images`` examples pooled over the train
    attacks' detector data (a detector meant to meet every one of them), then folded into the guarded
    classifier. Counted on the attacked test images: robust accuracy of the guarded classifier (a
    rejected input counts as defended), of the model alone, and the detection rate (the fraction of
    the examples that fool the model alone that the detector flags).
    """
    from .adaptive import guarded_classifier, guarded_predictions
    from .metrics import wilson_interval

    cfg = task.config
    train = upstream[task.deps[0]]
    defense, data = trained_defense(train, ctx)
    seed = int(task.key[:8], 16)
    pooled = [store.load_artifact(key) for key in task.deps[1:]]
    x_pool = torch.cat([p["x"] for p in pooled])
    y_pool = np.concatenate([p["is_adv"].numpy() for p in pooled]).astype(int)
    if len(y_pool) > cfg["detector_images"]:
        from sklearn.model_selection import train_test_split

        # Seeded by the suite seed, not the task: every attack of this detector meets the same fitted detector.
        keep, _ = train_test_split(np.arange(len(y_pool)), train_size=cfg["detector_images"],
                                   random_state=cfg["seed"], stratify=y_pool)
        x_pool, y_pool = x_pool[torch.from_numpy(np.sort(keep))], y_pool[np.sort(keep)]
    defense.fit_detector(x_pool, y_pool, seed=cfg["seed"])
    idx = _eval_indices(data, cfg["eval"])
    threshold = _operating_threshold(defense, data, idx, cfg["threshold"], ctx)
    guarded = guarded_classifier(defense, threshold, features_from=x_pool, seed=cfg["seed"])  # x_pool: surrogate
    model = defense.deployed()
    reject = guarded.reject_class

    x, y = data.test_x[idx], data.test_y[idx]
    device = torch.device(ctx.device)
    pred_model_clean = predict(model, x, device=device, batch_size=ctx.batch_size)
    pred_guarded_clean = guarded_predictions(guarded, x, batch_size=ctx.batch_size, device=device)
    attack_cfg = cfg["attack"]
    artifact, rows = {"indices": idx}, DetectionRows()
    defended_by: dict[str, torch.Tensor] = {}
    for evaluation in ("non-adaptive", "adaptive"):
        params = dict(attack_cfg["params"])
        if evaluation == "adaptive":
            params["backend"] = "torch"  # the only backend that takes the guarded surface's own objective
        attack = attacks.get(attack_cfg["name"]).build(**params)
        if evaluation == "non-adaptive":
            x_adv = attack.run(model, x, y, cfg["budget"], batch_size=ctx.batch_size, device=ctx.device,
                               seed=seed).detach().cpu().float()
        else:
            x_adv = _sweep_detector_weights(attack, guarded, x, y, cfg, ctx, seed)
        artifact[f"x_adv_{evaluation.replace('-', '_')}"] = x_adv
        pred_model = predict(model, x_adv, device=device, batch_size=ctx.batch_size)
        pred_guarded = guarded_predictions(guarded, x_adv, batch_size=ctx.batch_size, device=device)
        fooled_model = (pred_model != y) & (pred_model_clean == y)
        defended = defended_by[evaluation] = (pred_guarded == y) | (pred_guarded == reject)
        low, high = wilson_interval(int(defended.sum()), len(y))
        delta = (x_adv - x).flatten(1).double()
        rows.append(_detection_row(
            task, train, method=task.info["detector"], evaluation=evaluation,
            train_attack="+".join(task.info["train_attacks"]), test_attack=task.info["attack"],
            attack_config=json.dumps({**attack_cfg, "params": params}, sort_keys=True), budget=cfg["budget"],
            n=len(y), detection_rate=float((pred_guarded[fooled_model] == reject).float().mean())
            if fooled_model.any() else None,
            attack_success_rate=float((~defended).float().mean()),
            mse_mean=float((delta[fooled_model] ** 2).mean(1).mean()) if fooled_model.any() else None,
            clean_acc=float((pred_guarded_clean == y).float().mean()),
            clean_rejected=float((pred_guarded_clean == reject).float().mean()),
            model_robust_acc=float((pred_model == y).float().mean()),
            model_clean_acc=float((pred_model_clean == y).float().mean()),
            robust_acc=float(defended.float().mean()), robust_ci_low=low, robust_ci_high=high,
            threshold=guarded.threshold, target_fpr=cfg["threshold"].get("fpr"),
            key=f"{task.key}:{evaluation}"))
    # An attacker who knows the detector keeps, per image, whichever of the two examples gets through.
    either = defended_by["non-adaptive"] & defended_by["adaptive"]
    low, high = wilson_interval(int(either.sum()), len(y))
    rows.append({**rows[-1], "evaluation": "worst-case", "key": f"{task.key}:worst-case", "detection_rate": None,
                 "mse_mean": None, "model_robust_acc": None, "attack_success_rate": float((~either).float().mean()),
                 "robust_acc": float(either.float().mean()), "robust_ci_low": low, "robust_ci_high": high})
    store.save_artifact(task.key, artifact)
    return rows


def _operating_threshold(defense: Defense, data: DatasetSplits, eval_idx: torch.Tensor, rule: dict[str, Any],
                         ctx: RunContext) -> float | None:
    """The detector's threshold for the guarded classifier: None (the binary classifier's own decision)
    or, for rule "fpr", the score that flags a fraction ``fpr`` of clean test images outside the attacked
    subset (clean data only, never seen by the detector or attacked)."""
    from .detection import clean_threshold, positive_scores

    if rule["rule"] == "classifier":
        return None
    held_out = torch.ones(len(data.test_y), dtype=torch.bool)
    held_out[eval_idx] = False
    if int(held_out.sum()) < 20:
        raise TaskFailed(f"adaptive_threshold: fpr needs clean test images outside the {len(eval_idx)} attacked ones; "
                         f"the test split has {len(data.test_y)}: lower the dataset's eval_size")
    scores = positive_scores(defense.detector(), defense.features(data.test_x[held_out], ctx.batch_size))
    return clean_threshold(scores, rule["fpr"])


def _sweep_detector_weights(attack, guarded, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any],
                            ctx: RunContext, seed: int) -> torch.Tensor:
    """The detector-aware attack at each detector weight in turn (one run if the attack ignores them);
    each image keeps its first example that is misclassified and not detected, else the last one."""
    from .adaptive import guarded_predictions

    x_adv, through = None, torch.zeros(len(y), dtype=torch.bool)
    for weight in cfg["detector_weights"] or [guarded.detector_weight]:
        guarded.detector_weight = weight
        todo = ~through if x_adv is not None else torch.ones(len(y), dtype=torch.bool)
        out = attack.run(guarded, x[todo], y[todo], cfg["budget"], batch_size=ctx.batch_size, device=ctx.device,
                         seed=seed).detach().cpu().float()
        x_adv = out if x_adv is None else x_adv.index_put((todo.nonzero().squeeze(1),), out)
        pred = guarded_predictions(guarded, x_adv, batch_size=ctx.batch_size, device=ctx.device)
        through = (pred != y) & (pred != guarded.reject_class)
        if through.all():
            break
    return x_adv


STEPS: dict[str, Callable[[Task, dict[str, Task], RunContext, Store], dict | None]] = {
    "train": _run_train, "craft": _run_craft, "score": _run_score,
    "detector-data": _run_detector_data, "detect": _run_detect, "adaptive": _run_adaptive,
}


def run_task(task: Task, upstream: dict[str, Task], ctx: RunContext) -> tuple[str, str | None]:
    """Run one task and record it. Returns ("done", None) or ("failed", error message).

    KeyboardInterrupt is not caught: the task is then neither done nor failed,
    and a rerun does it again.
    """
    store = Store(ctx.store_dir)
    provenance = ctx.provenance()
    torch.manual_seed(int(task.key[:8], 16))
    start = time.perf_counter()
    try:
        output = STEPS[task.kind](task, upstream, ctx, store)
        wall = time.perf_counter() - start
        stamp = dict(suite=ctx.suite, versions=json.dumps(provenance["versions"], sort_keys=True),
                     git_commit=provenance["git_commit"], created_at=now())
        if isinstance(output, DetectionRows):
            for row in output:
                row.setdefault("key", task.key)
                row.update(task_key=task.key, wall_time_s=wall, **stamp)
            store.mark_done(task, wall_time_s=wall, provenance=provenance, detections=output)
        else:
            if output is not None:
                output.update(key=task.key, wall_time_s=wall + output.pop("craft_time_s", 0.0), **stamp)
            store.mark_done(task, wall_time_s=wall, provenance=provenance, result=output)
        return "done", None
    except Exception as e:  # a failing task must not stop the others
        error = f"{type(e).__name__}: {e}"
        store.mark_failed(task, error + "\n" + traceback.format_exc(limit=8),
                          wall_time_s=time.perf_counter() - start, provenance=provenance)
        return "failed", error
    finally:
        store.close()


@dataclass
class RunSummary:
    planned: int = 0
    already_done: int = 0
    ran: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (label, error)
    skipped: list[str] = field(default_factory=list)              # labels whose upstream failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


class LocalExecutor:
    """Runs the tasks one after another in this process (the default)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        by_key = {t.key: t for t in plan.tasks}
        done = store.done_keys(plan.keys)
        todo = [t for t in plan.tasks if t.key not in done]
        summary = RunSummary(planned=len(plan.tasks), already_done=len(plan.tasks) - len(todo))
        broken: set[str] = set()
        for i, task in enumerate(todo, 1):
            prefix = f"[{i}/{len(todo)}] {task.label}"
            if any(dep in broken for dep in task.deps):
                broken.add(task.key)
                summary.skipped.append(task.label)
                self.echo(f"{prefix}: skipped, an upstream task failed")
                continue
            start = time.perf_counter()
            status, error = run_task(task, {k: by_key[k] for k in task.deps}, ctx)
            summary.ran += 1
            if status == "failed":
                broken.add(task.key)
                summary.failed.append((task.label, error or ""))
                self.echo(f"{prefix}: FAILED ({error})")
            else:
                self.echo(f"{prefix}: {time.perf_counter() - start:.1f}s")
        return summary
