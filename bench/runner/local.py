"""The default executor: the plan's tasks one after another, in this process."""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from ..plan import Plan
from ..registry import executors
from ..store import Store
from .context import RunContext
from .executor import RunSummary
from .progress import RunEstimate, duration
from .tasks import run_task


@executors.register("local")
class LocalExecutor:
    """Runs the tasks one after another in this process (the default)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        by_key = {t.key: t for t in plan.tasks}
        done = store.done_keys(plan.keys)
        todo = [t for t in plan.tasks if t.key not in done]
        summary = RunSummary(planned=len(plan.tasks), already_done=len(plan.tasks) - len(todo))
        cause: dict[str, str] = {}  # key of a failed or skipped task -> label of the failed task behind it
        skipped_by: Counter[str] = Counter()  # label of a failed task -> tasks skipped because of it
        estimate = RunEstimate(store.mean_wall_times())
        for i, task in enumerate(todo, 1):
            prefix = f"[{i}/{len(todo)}] {task.label}"
            failed_dep = next((dep for dep in task.deps if dep in cause), None)
            if failed_dep is not None:  # counted, and said once per failed task at the end
                cause[task.key] = cause[failed_dep]
                skipped_by[cause[task.key]] += 1
                summary.skipped.append(task.label)
                continue
            start = time.perf_counter()
            status, error = run_task(task, {k: by_key[k] for k in task.deps}, ctx)
            elapsed = time.perf_counter() - start
            summary.ran += 1
            if status == "failed":
                cause[task.key] = task.label
                summary.failed.append((task.label, error or ""))
                self.echo(f"{prefix}: FAILED ({error})")
            else:
                estimate.record(task.kind, elapsed)
                left = todo[i:]
                eta = f", about {duration(estimate.remaining(left))} left" if left else ""
                self.echo(f"{prefix}: {elapsed:.1f}s{eta}")
        for root, n in skipped_by.items():
            self.echo(f"skipped {n} task{'s' if n != 1 else ''} that need {root!r}, which failed")
        return summary
