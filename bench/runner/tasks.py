"""Running one task: look up its step by kind, run it, stamp its rows, record it in the store.

``run_task`` does not know which executor called it; an executor only decides where and in which
order tasks run (``bench.runner.executor``). ``run_fused`` runs several tasks of one kind as one batch
(a step registered with ``fused``: craft tasks that differ only in budget) and records each exactly as
``run_task`` would have.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import replace
from typing import Any

import torch

from ..plan import Task
from ..provenance import unverified_data
from ..registry import task_steps
from ..store import ArtifactBroken, Store, now
from .batching import run_with_backoff
from .context import RunContext, task_seed

Outcome = tuple[str, "str | None"]  # ("done", None), ("failed", message) or ("broken", artifact key)


def run_task(task: Task, upstream: dict[str, Task], ctx: RunContext) -> Outcome:
    """Run one task and record it. Returns ("done", None), ("failed", error message), or ("broken", key)
    when an upstream artifact ``key`` is missing or damaged (nothing is recorded: the executor re-runs the
    task that made it, then this one; ``bench.runner.heal``).

    A task that raises is recorded as failed with its error and traceback. KeyboardInterrupt is not
    caught: the task is then neither done nor failed, and a rerun does it again.
    """
    return run_fused([task], upstream, ctx)[0]


def run_fused(tasks: list[Task], upstream: dict[str, Task], ctx: RunContext) -> list[Outcome]:
    """Run ``tasks`` (one, or several of a kind whose step has a ``fused`` form) and record each; one
    outcome per task. The wall time of a fused batch is shared equally among its tasks."""
    store = Store(ctx.store_dir)
    torch.manual_seed(task_seed(tasks[0]))
    start = time.perf_counter()
    try:
        step = task_steps.get(tasks[0].kind)  # inside: an unknown kind is recorded as a failed task
        if len(tasks) == 1:
            run = lambda batch_size: [step.factory(tasks[0], upstream, replace(ctx, batch_size=batch_size), store)]
        else:
            fused = step.meta["fused"]
            run = lambda batch_size: fused(tasks, upstream, replace(ctx, batch_size=batch_size), store)
        if tasks[0].kind == "train":  # its batch size is the defense's hyperparameter, not the device's
            rows_per_task, batch_size = run(ctx.batch_size), None
        else:
            rows_per_task, batch_size = run_with_backoff(tasks[0], ctx.device, ctx.batch_size, run)
        wall = (time.perf_counter() - start) / len(tasks)
        for task, rows in zip(tasks, rows_per_task):
            _record_done(task, rows, wall, batch_size, upstream, ctx, store, step.meta.get("table"))
        return [("done", None)] * len(tasks)
    except ArtifactBroken as e:
        return [("broken", e.key)] * len(tasks)
    except Exception as e:  # a failing task must not stop the others
        error = f"{type(e).__name__}: {e}"
        wall = (time.perf_counter() - start) / len(tasks)
        for task in tasks:
            store.mark_failed(task, error + "\n" + traceback.format_exc(limit=8), wall_time_s=wall,
                              provenance=_provenance(task, upstream, ctx))
        return [("failed", error)] * len(tasks)
    finally:
        store.close()


def _provenance(task: Task, upstream: dict[str, Task], ctx: RunContext) -> dict[str, Any]:
    provenance = ctx.provenance()
    # A dataset read with verify: false (in this task's config or an upstream one's) is recorded with the versions.
    unverified = unverified_data([task.config, *(upstream[k].config for k in task.deps if k in upstream)])
    if unverified:
        provenance = {**provenance, "versions": {**provenance["versions"], **unverified}}
    return provenance


def _record_done(task: Task, rows: list[dict[str, Any]], wall: float, batch_size: int | None,
                 upstream: dict[str, Task], ctx: RunContext, store: Store, table: str | None) -> None:
    provenance = _provenance(task, upstream, ctx)
    stamp = dict(suite=ctx.suite, versions=json.dumps(provenance["versions"], sort_keys=True),
                 git_commit=provenance["git_commit"], created_at=now(), batch_size=batch_size)
    for row in rows:
        row.setdefault("key", task.key)
        row.update(wall_time_s=wall + row.pop("upstream_wall_time_s", 0.0), **stamp)
    # The hashes of the upstream artifacts it read: a producer re-run with other output recomputes it.
    inputs = {dep: record[0] for dep in task.deps if (record := store.artifact_record(dep))}
    store.mark_done(task, wall_time_s=wall, provenance=provenance, table=table, rows=rows, inputs=inputs,
                    batch_size=batch_size)
