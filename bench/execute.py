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

import torch

from .data import DataContext, DatasetSplits, load_dataset
from .defense import Defense
from .detector_steps import DetectionRows, run_adaptive, run_detect, run_detector_data
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


def eval_indices(data: DatasetSplits, eval_cfg: dict[str, Any]) -> torch.Tensor:
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
    idx = eval_indices(data, cfg["eval"])
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


STEPS: dict[str, Callable[[Task, dict[str, Task], RunContext, Store], dict | None]] = {
    "train": _run_train, "craft": _run_craft, "score": _run_score,
    "detector-data": run_detector_data, "detect": run_detect, "adaptive": run_adaptive,
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
