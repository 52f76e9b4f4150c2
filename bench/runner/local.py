"""The default executor: the plan's tasks one after another, in this process, each claimed in the store first.

``run_loop`` (``bench.runner.loop``) with ``InProcessWorker`` (one slot: a job runs in this process when
the loop waits for it), ``PlanOrder`` (the first ready task in plan order) and ``SequentialProgress``.
"""

from __future__ import annotations

import time
from typing import Callable

from ..plan import Plan, Task
from ..registry import executors
from ..store import Store
from .context import RunContext
from .executor import RunSummary
from .loop import Assignment, Finished, RunLoop, run_loop
from .progress import SequentialProgress
from .tasks import run_fused


@executors.register("local")
class LocalExecutor:
    """Runs the tasks one after another in this process (the default; no options). Each task is claimed in
    the store first, so a second run on the same store does other tasks, or waits.

    Claims: ``bench.runner.claims``; ``poll_s``: how often a run waiting for another run's tasks looks again."""

    def __init__(self, echo: Callable[[str], None] = print, *, poll_s: float = 2.0):
        self.echo = echo
        self.poll_s = poll_s  # how often a run waiting for another run's tasks looks again

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        return run_loop(plan, ctx, store, InProcessWorker(), PlanOrder(), SequentialProgress, echo=self.echo,
                        poll_s=self.poll_s)


class InProcessWorker:
    """One worker, this process: ``submit`` keeps the job, ``wait`` runs it (with the run's own context:
    its device, its progress bars) and reports it. It cannot die: an error is its task's failure."""

    def __init__(self):
        self.slots = ["local"]
        self._job: tuple[str, list[Task], dict[str, Task], RunContext] | None = None

    def submit(self, slot: str, tasks: list[Task], upstream: dict[str, Task], ctx: RunContext) -> None:
        self._job = (slot, tasks, upstream, ctx)

    def wait(self, timeout: float | None) -> list[Finished]:
        if self._job is None:
            return []
        (slot, tasks, upstream, ctx), self._job = self._job, None
        start = time.perf_counter()
        outcomes = run_fused(tasks, upstream, ctx)
        return [Finished(slot, outcomes, time.perf_counter() - start, where=slot)]

    def replace(self, slot: str) -> None:
        pass

    def close(self) -> None:
        self._job = None


class PlanOrder:
    """The local executor's policy: one task at a time, the first in plan order (upstream before downstream)
    that can start. A task downstream of a failure is skipped when the scan reaches it, so the progress count
    of what is left drops as the run gets there; a task the healer made not-done again comes before its
    readers. For a backend of one slot (nothing runs while it assigns)."""

    def assign(self, run: RunLoop, free: list[str]) -> list[Assignment]:
        task, _ = self._scan(run)
        return [(free[0], [task])] if task is not None else []

    def waiting(self, run: RunLoop) -> list[str]:
        return list(self._scan(run)[1])

    def ended(self, slot: str, tasks: list[Task], died: bool) -> None:
        pass

    @staticmethod
    def _scan(run: RunLoop) -> tuple[Task | None, set[str]]:
        """The first task in plan order that is not done, not failed or skipped, not held by another run and
        not downstream of one that is; and the tasks that wait for another run (held, or downstream of one)."""
        blocked: set[str] = set()
        for t in run.plan.tasks:
            if t.key in run.done or t.key in run.cause:
                continue
            if t.key in run.held or any(d in blocked for d in t.deps):
                blocked.add(t.key)
                continue
            if run.skip_if_upstream_failed(t):
                continue
            return t, blocked
        return None, blocked
