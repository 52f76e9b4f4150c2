"""Running one task: look up its step by kind, run it, stamp its rows, record it in the store.

``run_task`` does not know which executor called it; an executor only decides where and in which
order tasks run (``bench.runner.executor``).
"""

from __future__ import annotations

import json
import time
import traceback

import torch

from ..plan import Task
from ..provenance import unverified_data
from ..registry import task_steps
from ..store import ArtifactBroken, Store, now
from .context import RunContext, task_seed


def run_task(task: Task, upstream: dict[str, Task], ctx: RunContext) -> tuple[str, str | None]:
    """Run one task and record it. Returns ("done", None), ("failed", error message), or ("broken", key)
    when an upstream artifact ``key`` is missing or damaged (nothing is recorded: the executor re-runs the
    task that made it, then this one; ``bench.runner.heal``).

    A task that raises is recorded as failed with its error and traceback. KeyboardInterrupt is not
    caught: the task is then neither done nor failed, and a rerun does it again.
    """
    store = Store(ctx.store_dir)
    provenance = ctx.provenance()
    # A dataset read with verify: false (in this task's config or an upstream one's) is recorded with the versions.
    unverified = unverified_data([task.config, *(upstream[k].config for k in task.deps if k in upstream)])
    if unverified:
        provenance = {**provenance, "versions": {**provenance["versions"], **unverified}}
    torch.manual_seed(task_seed(task))
    start = time.perf_counter()
    try:
        step = task_steps.get(task.kind)
        rows = step.factory(task, upstream, ctx, store)
        wall = time.perf_counter() - start
        stamp = dict(suite=ctx.suite, versions=json.dumps(provenance["versions"], sort_keys=True),
                     git_commit=provenance["git_commit"], created_at=now())
        for row in rows:
            row.setdefault("key", task.key)
            row.update(wall_time_s=wall + row.pop("upstream_wall_time_s", 0.0), **stamp)
        # The hashes of the upstream artifacts it read: a producer re-run with other output recomputes it.
        inputs = {dep: record[0] for dep in task.deps if (record := store.artifact_record(dep))}
        store.mark_done(task, wall_time_s=wall, provenance=provenance, table=step.meta.get("table"), rows=rows,
                        inputs=inputs)
        return "done", None
    except ArtifactBroken as e:
        return "broken", e.key
    except Exception as e:  # a failing task must not stop the others
        error = f"{type(e).__name__}: {e}"
        store.mark_failed(task, error + "\n" + traceback.format_exc(limit=8),
                          wall_time_s=time.perf_counter() - start, provenance=provenance)
        return "failed", error
    finally:
        store.close()
