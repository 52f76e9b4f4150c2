"""The default executor: the plan's tasks one after another, in this process, each claimed in the store first."""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from ..plan import Plan, Task
from ..registry import executors
from ..store import Store
from .claims import Claims
from .context import RunContext
from .executor import RunSummary
from .heal import StoreHealer
from .cost import TaskCosts
from .progress import duration
from .tasks import run_task


@executors.register("local")
class LocalExecutor:
    """Runs the tasks one after another in this process (the default; no options). Each task is claimed in
    the store first, so a second run on the same store does other tasks, or waits.

    Claims: ``bench.runner.claims``; ``poll_s``: how often a run waiting for another run's tasks looks again."""

    def __init__(self, echo: Callable[[str], None] = print, *, poll_s: float = 2.0):
        self.echo = echo
        self.poll_s = poll_s  # how often a run waiting for another run's tasks looks again

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        with Claims(ctx.store_dir) as claims:
            return self._run(plan, ctx, store, claims)

    def _run(self, plan: Plan, ctx: RunContext, store: Store, claims: Claims) -> RunSummary:
        by_key = {t.key: t for t in plan.tasks}
        healer = StoreHealer(plan, store, self.echo)
        healer.check_done_artifacts()  # a missing or resized artifact: its task runs again, first
        done = store.done_keys(plan.keys)
        summary = RunSummary(planned=len(plan.tasks), already_done=len(done))
        cause: dict[str, str] = {}  # key of a failed or skipped task -> label of the failed task behind it
        skipped_by: Counter[str] = Counter()  # label of a failed task -> tasks skipped because of it
        held: set[str] = set()  # tasks another run has claimed (looked at again after a wait)
        waiting_said = False
        costs = TaskCosts(plan, store.wall_times(plan.keys), store.mean_wall_times())
        i = 0
        while True:
            task, blocked = self._next(plan, done, cause, held)
            if task is None:
                if not blocked:
                    break
                if not waiting_said:  # once per wait, not once per poll
                    self.echo(claims.waiting_line(store, list(blocked)))
                    waiting_said = True
                time.sleep(self.poll_s)
                done, held = store.done_keys(plan.keys), set()
                continue
            failed_dep = next((dep for dep in task.deps if dep in cause), None)
            if failed_dep is not None:  # counted, and said once per failed task at the end
                cause[task.key] = cause[failed_dep]
                skipped_by[cause[task.key]] += 1
                summary.skipped.append(task.label)
                continue
            claim = claims.take(store, task.key)
            if claim != "claimed":  # "done": another run stored it since we looked; "held": it is on it
                done, held = (done | {task.key}, held) if claim == "done" else (done, held | {task.key})
                continue
            waiting_said = False
            i += 1
            left = [t for t in plan.tasks if t.key not in done and t.key not in cause and t is not task]
            prefix = f"[{i}/{i + len(left)}] {task.label}"
            start = time.perf_counter()
            try:
                status, error = run_task(task, {k: by_key[k] for k in task.deps}, ctx)
            finally:
                claims.release(store, task.key)
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
                costs.record(task, elapsed)
                left = [t for t in plan.tasks if t.key not in done and t.key not in cause]
                eta = f", about {duration(costs.total(left))} left" if left else ""
                self.echo(f"{prefix}: {elapsed:.1f}s{eta}")
        for root, n in skipped_by.items():
            self.echo(f"skipped {n} task{'s' if n != 1 else ''} that need {root!r}, which failed")
        return summary

    @staticmethod
    def _next(plan: Plan, done: set[str], cause: dict[str, str], held: set[str]) -> tuple[Task | None, set[str]]:
        """The first task in plan order (upstream before downstream) that is not done, not failed or skipped
        in this run, not held by another run and not downstream of one that is; and the set of tasks that
        wait for another run. A task the healer made not-done again comes before its readers."""
        blocked: set[str] = set()
        for t in plan.tasks:
            if t.key in done or t.key in cause:
                continue
            if t.key in held or any(d in blocked for d in t.deps):
                blocked.add(t.key)
                continue
            return t, blocked
        return None, blocked
