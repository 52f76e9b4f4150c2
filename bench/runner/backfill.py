"""Per-example columns a stored result row gained after it was written, filled from what the store holds.

A results row now keeps, aligned with its ``correct`` flags, the attacked test indices (``example_indices``) and
each example's perturbation size (``perturbation_l2``/``perturbation_linf``; bench.report.best_known counts a
minimum-norm attack's examples at every budget through them). Both are functions of the row's inputs alone:
the crafted examples (an artifact whose key the score task's key already hashes) and the dataset. So a store
written before them gets them on its next run without re-crafting or re-scoring anything; the rows' keys and
numbers stay as they are. A row whose crafted examples are gone keeps its gap (the heal step re-makes broken
artifacts when a task needs them; this never does).

The soundness checks' noise rows are crafted and scored in one task and keep no examples: they get their indices
(the noise is within its budget by construction, so its budget says all the report needs).
"""

from __future__ import annotations

import json
from typing import Any

from ..metrics import perturbation_sizes
from ..plan import Plan, Task
from ..plan.specs import CraftedScoreSpec, DatasetRef
from ..store import ArtifactBroken, Store
from .context import RunContext, attacked_indices, load_task_dataset

_CHECK_KINDS = ("check-noise", "probe")  # rows over the checks' examples, without an artifact of their own


def _needs_examples(task: Task) -> bool:
    """A score task of crafted examples (not the clean split, not an out-distribution set)."""
    return task.kind == "score" and isinstance(task.spec, CraftedScoreSpec)


def backfill_per_example(plan: Plan, ctx: RunContext, store: Store) -> int:
    """Fill the per-example columns of the plan's stored result rows that lack them; returns how many rows got
    them."""
    tasks = {t.key: t for t in plan.tasks}
    wanted = [t.key for t in plan.tasks if _needs_examples(t) or t.kind in _CHECK_KINDS]
    missing = store.rows_missing("example_indices", wanted)
    if not missing:
        return 0
    datasets: dict[str, Any] = {}

    def dataset_of(train: Task):
        dataset: DatasetRef = train.spec.dataset
        key = json.dumps(dataset.payload(), sort_keys=True)
        if key not in datasets:
            datasets[key] = load_task_dataset(dataset, ctx)
        return datasets[key]

    filled: dict[str, dict[str, Any]] = {}
    for key in missing:
        task = tasks[key]
        train = tasks.get(task.model)
        if train is None:
            continue
        data = dataset_of(train)
        if task.kind in _CHECK_KINDS:
            upstream = {k: tasks[k] for k in task.deps if k in tasks}
            filled[key] = {"example_indices": attacked_indices(task, upstream, data, ctx).numpy()}
            continue
        try:
            crafted = store.load_artifact(task.spec.craft)
        except (ArtifactBroken, FileNotFoundError, KeyError):
            continue  # gone or damaged: the row keeps its gap until its producer re-runs
        indices = crafted["indices"]
        x = data.test_x[indices]
        filled[key] = {"example_indices": indices.numpy(),
                       **perturbation_sizes(x.numpy(), crafted["x_adv"].numpy())}
    if filled:
        store.fill_rows(filled)
    return len(filled)
