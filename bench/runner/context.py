"""What every task step gets: the run context, the task's data, and the trained defense it builds on.

A trained defense is restored from its train task's checkpoint once and cached (per process), since
many craft and score tasks use the same one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from ..data import DataContext, DatasetSplits, load_dataset
from ..defense import Defense
from ..errors import UserError
from ..plan import Task
from ..plan.specs import DatasetRef, EvalSet, TrainSpec
from ..provenance import environment, git_commit, package_versions
from ..registry import defenses
from ..store import load_artifact
from ..training import predict


@dataclass(frozen=True)
class RunContext:
    store_dir: Path
    data: DataContext
    device: str
    batch_size: int = 256
    progress: bool = True
    suite: str = ""

    def provenance(self) -> dict[str, Any]:
        return {"suite": self.suite, "versions": {**package_versions(), **environment()}, "git_commit": git_commit()}


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to PyTorch on this machine")
    return requested


def task_seed(task: Task) -> int:
    """A seed from the task's key: reproducible, and different for every task."""
    return int(task.key[:8], 16)


@contextlib.contextmanager
def seeded_randomness(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators (CPU, and the device's if CUDA) for the block, then restore them:
    what a stochastic defense draws from at test time."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def load_task_dataset(dataset: DatasetRef | Mapping[str, Any], ctx: RunContext) -> DatasetSplits:
    """The dataset a task names (a ``DatasetRef``, or its payload as stored), with its subsets and ``verify``."""
    ref = dataset if isinstance(dataset, DatasetRef) else DatasetRef.from_payload(dataset)
    data = ctx.data if ref.verify else replace(ctx.data, verify=False)
    return load_dataset(ref.name, ref.params, data, train_size=ref.train_size, test_size=ref.test_size,
                        seed=ref.subset_seed)


def eval_indices(data: DatasetSplits, eval_set: EvalSet,
                 classify: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The attacked test examples: the same seeded subset for every attack, so per-example worst cases over
    attacks line up; a smaller ``eval_size`` takes the first of the same order. ``correct_by`` (a trained
    defense's key): only the examples ``classify`` (that defense's predicted labels) gets right, in order."""
    generator = torch.Generator().manual_seed(eval_set.dataset.subset_seed)
    order = torch.randperm(len(data.test_y), generator=generator)
    if eval_set.correct_by:
        if classify is None:
            raise ValueError("eval_correct_by: the examples a defense gets right need its predictions")
        order = order[classify(data.test_x[order]) == data.test_y[order]]
    return order[: eval_set.eval_size].sort().values


def attacked_indices(task: Task, upstream: dict[str, Task], data: DatasetSplits, ctx: RunContext) -> torch.Tensor:
    """``eval_indices`` of a task's ``eval`` set; with ``correct_by``, that trained defense (an upstream
    task) decides which examples it gets right."""
    eval_set: EvalSet = task.spec.eval
    referee = eval_set.correct_by
    classify = None if referee is None else (
        lambda images: deployed_predictions(trained_defense(upstream[referee], ctx)[0], images, task, ctx))
    return eval_indices(data, eval_set, classify)


def deployed_predictions(defense: Defense, x: torch.Tensor, task: Task, ctx: RunContext) -> torch.Tensor:
    """A trained defense's decisions on ``x`` (a stochastic one's seeded by the task, so a rerun agrees)."""
    device = torch.device(ctx.device)
    with seeded_randomness(task_seed(task), device):
        return predict(defense.surface("deployed"), x, device=device, batch_size=ctx.batch_size)


def build_defense(train: Task, ctx: RunContext) -> tuple[Defense, DatasetSplits]:
    """The (untrained) defense of a train task, set up for its dataset, and that dataset."""
    spec: TrainSpec = train.spec
    data = load_task_dataset(spec.dataset, ctx)
    defense = defenses.get(spec.defense.name).build(**spec.defense.params)
    defense.label = train.about.defense
    defense.setup(data.input_spec(), seed=spec.seed, device=torch.device(ctx.device))
    return defense, data


@lru_cache(maxsize=8)
def _trained_defense(train_key: str, train_json: str, ctx: RunContext) -> tuple[Defense, DatasetSplits]:
    train = Task("train", train_key, "", json.loads(train_json), [])
    defense, data = build_defense(train, ctx)
    defense.load_state_dict(load_artifact(ctx.store_dir, train_key))
    return defense, data


def trained_defense(train: Task, ctx: RunContext) -> tuple[Defense, DatasetSplits]:
    """A trained defense restored from its checkpoint (cached), and its dataset."""
    return _trained_defense(train.key, json.dumps(train.config, sort_keys=True), ctx)
