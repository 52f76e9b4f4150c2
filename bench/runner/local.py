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
from .heal import StoreHealer
from .progress import RunEstimate, duration
from .tasks import run_task


@executors.register("local")
class LocalExecutor:
    """Runs the tasks one after another in this process (the default)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        by_key = {t.key: t for t in plan.tasks}
        healer = StoreHealer(plan, store, self.echo)
        healer.check_done_artifacts()  # a missing or resized artifact: its task runs again, first
        done = store.done_keys(plan.keys)
        summary = RunSummary(planned=len(plan.tasks), already_done=len(done))
        cause: dict[str, str] = {}  # key of a failed or skipped task -> label of the failed task behind it
        skipped_by: Counter[str] = Counter()  # label of a failed task -> tasks skipped because of it
        estimate = RunEstimate(store.mean_wall_times())
        i = 0
        # The next task is the first in plan order (upstream before downstream) that is not done and not
        # failed or skipped in this run: a task the healer made not-done again comes before its readers.
        while (task := next((t for t in plan.tasks if t.key not in done and t.key not in cause), None)):
            i += 1
            left = [t for t in plan.tasks if t.key not in done and t.key not in cause and t is not task]
            prefix = f"[{i}/{i + len(left)}] {task.label}"
            failed_dep = next((dep for dep in task.deps if dep in cause), None)
            if failed_dep is not None:  # counted, and said once per failed task at the end
                cause[task.key] = cause[failed_dep]
                skipped_by[cause[task.key]] += 1
                summary.skipped.append(task.label)
                continue
            start = time.perf_counter()
            status, error = run_task(task, {k: by_key[k] for k in task.deps}, ctx)
            elapsed = time.perf_counter() - start
            if status == "broken":  # an upstream artifact is damaged: re-run its producer, then this task
                if healer.broken(error):
                    done = store.done_keys(plan.keys)
                    continue
                status, error = "failed", f"artifact {error} is broken again after re-running its task"
            summary.ran += 1
            if status == "failed":
                cause[task.key] = task.label
                summary.failed.append((task.label, error or ""))
                self.echo(f"{prefix}: FAILED ({error})")
            else:
                healer.after_done(task)
                done = store.done_keys(plan.keys)
                estimate.record(task.kind, elapsed)
                left = [t for t in plan.tasks if t.key not in done and t.key not in cause]
                eta = f", about {duration(estimate.remaining(left))} left" if left else ""
                self.echo(f"{prefix}: {elapsed:.1f}s{eta}")
        for root, n in skipped_by.items():
            self.echo(f"skipped {n} task{'s' if n != 1 else ''} that need {root!r}, which failed")
        return summary
