"""The run loop: what every executor does with a plan, whatever runs its tasks.

``run_loop`` runs every task of the plan that the store does not hold yet, each after the tasks in its
``deps``, and returns a ``RunSummary``. An executor supplies three things:

* a ``WorkerBackend``, where jobs run: ``slots`` (one name per worker), ``submit`` a job (one task, or
  tasks fused into one batch) to a free slot, ``wait`` for jobs to end (``Finished``: one outcome per task
  from ``bench.runner.tasks.run_fused``, which records them, or why the worker died), ``replace`` a dead
  worker, ``close``. Built in: ``local.InProcessWorker``, ``pool.ProcessWorkers``, ``ray_executor.RayWorkers``;
* a ``Policy``, which ready tasks run next and where: ``assign`` jobs to free slots, say which tasks
  ``wait`` for another run, hear that a job ``ended``. Built in: ``local.PlanOrder`` (plan order, one
  task at a time) and ``scheduler.Scheduler`` (longest first, model affinity, fused batches);
* a ``Progress`` class: the lines said as tasks end (``bench.runner.progress``).

The loop owns the rest, so that every executor does it the same way:

* **healing** (``bench.runner.heal``): before the run, a done task whose artifact is missing or damaged is
  made not-done; a task that reports a broken upstream artifact (``("broken", key)``) re-runs its
  producer, then itself (one repair per artifact for a fused job, whose tasks all report it); after a
  producer re-ran, the readers of its old output are recomputed if the output changed;
* **claims** (``bench.runner.claims``): every task is claimed before it is submitted and released when
  its job ends, so two runs on one store share the work; a task another run holds is left to it, and when
  nothing else can start the loop says so once and looks again every ``poll_s``;
* **failures**: a task downstream of a failed one is skipped, said once per failed task at the end; the
  policy marks the ones it meets (``skip_if_upstream_failed``), so its progress counts go down at once,
  and the loop marks the rest at the end. A job whose worker died is retried on a replaced worker
  ``max_retries`` times, then its tasks are recorded failed with the reason;
* the **summary**: tasks planned, already done, run, failed, skipped, where each ran, fused jobs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol

from ..plan import Plan, Task
from ..store import Store
from .claims import Claims
from .context import RunContext
from .cost import TaskCosts
from .executor import RunSummary
from .heal import StoreHealer
from .tasks import Outcome


@dataclass
class Finished:
    """A worker backend's report of a job: its outcomes, or ``died`` (why the worker is gone)."""

    slot: str
    outcomes: list[Outcome] | None
    wall_s: float = 0.0
    where: str = ""
    died: str | None = None


class WorkerBackend(Protocol):
    slots: list[str]  # one per worker: "local", "cpu#0", "cuda:1#0", "ray#3"

    def submit(self, slot: str, tasks: list[Task], upstream: dict[str, Task], ctx: RunContext) -> None:
        """Start ``tasks`` (one job: run together through ``run_fused``) on the free ``slot``."""

    def wait(self, timeout: float | None) -> list[Finished]:
        """The jobs that ended, at least one unless ``timeout`` seconds passed first."""

    def replace(self, slot: str) -> None:
        """Start a fresh worker in place of the dead one on ``slot``."""

    def close(self) -> None: ...


class Progress(Protocol):
    """Built with the run (``RunLoop``: its state is read, never changed) once its state is set up."""

    def started(self, tasks: list[Task]) -> None:
        """A job of ``tasks`` was submitted."""

    def done(self, task: Task, seconds: float, where: str, batch_of: int) -> None:
        """``task`` is stored: it took ``seconds``, on ``where``, in a job of ``batch_of`` tasks."""

    def failed(self, task: Task, error: str) -> None: ...

    def drop(self, task: Task) -> None:
        """A task that will not run here (skipped, or stored by another run meanwhile)."""

    def close(self) -> None: ...


Assignment = tuple[str, list[Task]]  # (slot, the tasks of one job)


class Policy(Protocol):
    def assign(self, run: "RunLoop", free: list[str]) -> list[Assignment]:
        """Jobs for some of the ``free`` slots, among the tasks that may start now: not done, not failed or
        skipped (``run.cause``), not running (``run.in_flight``), not held by another run (``run.held``),
        every dependency in ``run.done``. May call ``run.skip_if_upstream_failed`` on the tasks it meets."""

    def waiting(self, run: "RunLoop") -> list[str]:
        """When nothing runs and nothing was assigned: the keys that wait for another run's claims (what the
        waiting line counts); empty: the run is over."""

    def ended(self, slot: str, tasks: list[Task], died: bool) -> None:
        """The job of ``tasks`` on ``slot`` ended (``died``: its worker is gone and was replaced)."""


def _job_label(tasks: list[Task]) -> str:
    extra = f" (+{len(tasks) - 1} fused)" if len(tasks) > 1 else ""
    return tasks[0].label + extra


def run_loop(plan: Plan, ctx: RunContext, store: Store, backend: WorkerBackend, policy: Policy,
             progress: Callable[["RunLoop"], Progress], *, echo: Callable[[str], None] = print,
             poll_s: float = 2.0, max_retries: int = 2) -> RunSummary:
    """Run ``plan`` on ``backend``'s workers in ``policy``'s order (see the module docstring); the backend is
    closed at the end, and this run's claims dropped, Ctrl-C included."""
    try:
        with Claims(ctx.store_dir) as claims:
            return RunLoop(plan, ctx, store, claims, backend, policy, progress, echo, poll_s, max_retries).run()
    finally:
        backend.close()


class RunLoop:
    """One run's state, which the policy and the progress reporter read: ``done`` (stored), ``cause``
    (failed or skipped: the label of the failed task behind it), ``held`` (claimed by another run, until
    the loop looks again), ``running`` (slot -> its job's tasks), ``costs``, ``plan``, ``by_key``."""

    def __init__(self, plan: Plan, ctx: RunContext, store: Store, claims: Claims, backend: WorkerBackend,
                 policy: Policy, progress: Callable[["RunLoop"], Progress], echo: Callable[[str], None],
                 poll_s: float, max_retries: int):
        self.plan, self.ctx, self.store, self.claims = plan, ctx, store, claims
        self.backend, self.policy, self.echo = backend, policy, echo
        self.poll_s = poll_s  # how often a run waiting for another run's tasks looks again
        self.max_retries = max_retries  # re-runs of a task after its worker died, before it counts as failed
        self.by_key = {t.key: t for t in plan.tasks}
        self.healer = StoreHealer(plan, store, echo)
        self.healer.check_done_artifacts()  # a missing or resized artifact: its task runs again, first
        self.done = store.done_keys(plan.keys)
        self.summary = RunSummary(planned=len(plan.tasks), already_done=len(self.done))
        self.costs = TaskCosts(plan, store.wall_times(plan.keys), store.mean_wall_times())
        self.cause: dict[str, str] = {}
        self.skipped_by: Counter[str] = Counter()  # label of a failed task -> tasks skipped because of it
        self.deaths: Counter[str] = Counter()  # task key -> times a worker died running it
        self.held: set[str] = set()
        self.running: dict[str, list[Task]] = {}
        self.waiting_said = False  # the waiting line is said once per wait, not once per poll
        self.progress = progress(self)

    @property
    def in_flight(self) -> set[str]:
        return {t.key for tasks in self.running.values() for t in tasks}

    def run(self) -> RunSummary:
        try:
            while True:
                free = [s for s in self.backend.slots if s not in self.running]
                lost = self._start(self.policy.assign(self, free) if free else [])
                if not self.running:
                    if lost:  # another run took or stored a task meanwhile: ask the policy again
                        continue
                    waiting = self.policy.waiting(self)
                    if not waiting:
                        break
                    if not self.waiting_said:
                        self.echo(self.claims.waiting_line(self.store, waiting))
                        self.waiting_said = True
                    time.sleep(self.poll_s)
                    self._look_again()
                    continue
                for finished in self.backend.wait(self.poll_s if self.held else None):
                    self._ended(finished)
                if self.held:  # look again at what the other run holds
                    self._look_again()
            for task in self.plan.tasks:  # whatever the policy did not meet
                self.skip_if_upstream_failed(task)
        finally:
            self.progress.close()
        for root, n in self.skipped_by.items():
            self.echo(f"skipped {n} task{'s' if n != 1 else ''} that need {root!r}, which failed")
        return self.summary

    def skip_if_upstream_failed(self, task: Task) -> bool:
        """Skip ``task`` if it is still to do and a task it needs failed or was skipped; whether it is skipped."""
        if task.key in self.done or task.key in self.cause:
            return False
        failed_dep = next((d for d in task.deps if d in self.cause), None)
        if failed_dep is None:
            return False
        self.cause[task.key] = self.cause[failed_dep]
        self.skipped_by[self.cause[task.key]] += 1
        self.summary.skipped.append(task.label)
        self.progress.drop(task)
        return True

    def _look_again(self) -> None:
        self.done, self.held = self.store.done_keys(self.plan.keys), set()

    def _start(self, assignments: list[Assignment]) -> bool:
        """Claim and submit each job (the tasks of it this run could claim); whether a claim was lost."""
        lost = False
        for slot, tasks in assignments:
            taken = []
            for task in tasks:
                claim = self.claims.take(self.store, task.key)
                if claim == "claimed":
                    taken.append(task)
                    continue
                lost = True
                if claim == "done":  # another run stored it since we looked
                    self.done.add(task.key)
                    self.progress.drop(task)
                else:  # "held": another run is on it
                    self.held.add(task.key)
            if not taken:
                continue
            self.backend.submit(slot, taken, {d: self.by_key[d] for t in taken for d in t.deps}, self.ctx)
            self.running[slot] = taken
            self.progress.started(taken)
            self.waiting_said = False
        return lost

    def _ended(self, finished: Finished) -> None:
        tasks = self.running.pop(finished.slot)
        for task in tasks:
            self.claims.release(self.store, task.key)
        if finished.outcomes is None:
            self._worker_died(finished, tasks)
            self.policy.ended(finished.slot, tasks, died=True)
            return
        self.policy.ended(finished.slot, tasks, died=False)
        self.summary.fused_jobs += len(tasks) > 1
        seconds = finished.wall_s / len(tasks)  # a fused job's wall time, shared equally
        repaired: dict[str, bool] = {}  # a fused job's tasks all report its one broken artifact
        for task, (status, error) in zip(tasks, finished.outcomes):
            if status == "broken":  # re-run the producer of the damaged artifact, then this task
                if error not in repaired:
                    repaired[error] = self.healer.broken(error)
                if repaired[error]:
                    continue
                status, error = "failed", f"artifact {error} is broken again after re-running its task"
            self.summary.ran += 1
            self.summary.placements[task.key] = finished.where
            if status == "failed":
                self.cause[task.key] = task.label
                self.summary.failed.append((task.label, error or ""))
                self.progress.failed(task, error or "")
            else:
                self.healer.after_done(task)
                self.costs.record(task, seconds)
                self.progress.done(task, seconds, finished.where, len(tasks))
        self.done = self.store.done_keys(self.plan.keys)

    def _worker_died(self, finished: Finished, tasks: list[Task]) -> None:
        self.backend.replace(finished.slot)
        for task in tasks:
            self.deaths[task.key] += 1
        attempts = max(self.deaths[t.key] for t in tasks)
        if attempts <= self.max_retries:
            self.echo(f"{_job_label(tasks)}: worker {finished.slot} died ({finished.died}); replaced it, retrying "
                      f"({attempts} of {self.max_retries} retries)")
            return
        reason = f"WorkerDied: the worker running it died {attempts} times; last: {finished.died}"
        for task in tasks:
            self.store.mark_failed(task, reason, wall_time_s=finished.wall_s, provenance=self.ctx.provenance())
            self.cause[task.key] = task.label
            self.summary.ran += 1
            self.summary.failed.append((task.label, reason))
            self.progress.failed(task, reason)
