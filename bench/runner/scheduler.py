"""The scheduler: a plan's task graph on a set of workers (processes on one machine, or Ray actors).

What it decides, the same for every worker backend (``bench.runner.pool``: processes, one or more per
device; ``bench.runner.ray_executor``: Ray actors, fractional GPUs):

* **order**: among the ready tasks (every upstream task done), the longest first, by ``TaskCosts``
  (stored timings of the same kind of task, else passes × examples), so a long training starts before
  a queue of one-second scores;
* **affinity**: a worker remembers the models (train tasks) whose tasks it ran: a job on a model it holds
  counts double for it, a job on a model another worker holds counts half, so a checkpoint is loaded once
  per worker rather than once per task;
* **fused batches**: ready craft tasks that share a model, an attack and its parameters and differ only in
  budget, where the attack's backend takes a budget per example (``Attack.fuses_budgets``), run as one job
  (``bench.runner.tasks.run_fused``), and ready score tasks of one model's surface on several crafted sets
  run as one job (one checkpoint load, one clean pass of the images they share); each task is still
  recorded under its own key, with the same bytes;
* **claims**: every task is claimed in the store before it is sent (``bench.runner.claims``), so a
  second run on the store shares the work;
* **failures**: a worker that dies (kill -9, the OOM killer, a segfault) is replaced and its tasks are
  retried, ``max_retries`` times, then recorded as failed with the reason; the run goes on. A task that
  raises is recorded failed by the worker (as in the local executor); tasks downstream of a failure are
  skipped;
* **progress**: one line per finished task (where it ran, how long) and an overall bar whose ETA comes
  from the cost estimates (tqdm).

Results are written by the workers through ``run_task`` (SQLite in WAL mode, each task one transaction);
the scheduler only reads the store, and records the failure of a task whose worker died.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from tqdm.auto import tqdm

from ..plan import Plan, Task
from ..registry import attacks, defenses, task_steps
from ..store import Store
from .batching import model_key
from .claims import Claims
from .context import RunContext
from .cost import TaskCosts
from .executor import RunSummary
from .heal import StoreHealer
from .progress import duration
from .tasks import Outcome

AFFINITY_MEMORY = 8  # models a worker is assumed to hold: the trained-defense cache's size (context.py)


@dataclass
class Job:
    """What one worker runs at once: a task, or tasks fused into one (``fusion_groups``)."""

    tasks: list[Task]
    cost: float

    @property
    def model(self) -> str:
        return model_key(self.tasks[0])

    @property
    def label(self) -> str:
        extra = f" (+{len(self.tasks) - 1} fused)" if len(self.tasks) > 1 else ""
        return self.tasks[0].label + extra


@dataclass
class Finished:
    """A worker backend's report of a job: its outcomes, or ``died`` (why the worker is gone)."""

    slot: str
    outcomes: list[Outcome] | None
    wall_s: float = 0.0
    where: str = ""
    died: str | None = None


class WorkerBackend(Protocol):
    slots: list[str]  # one per worker: "cpu#0", "cuda:1#0", "ray#3"

    def submit(self, slot: str, tasks: list[Task], upstream: dict[str, Task], ctx: RunContext) -> None: ...

    def wait(self, timeout: float | None) -> list[Finished]: ...

    def replace(self, slot: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class ScheduleSummary(RunSummary):
    placements: dict[str, str] = field(default_factory=dict)  # task key -> where it ran
    fused_jobs: int = 0


FUSIBLE_KINDS = ("craft", "score")


def fusion_groups(ready: list[Task], by_key: dict[str, Task], kinds: Iterable[str] = FUSIBLE_KINDS
                  ) -> list[list[Task]]:
    """``ready`` split into jobs; tasks of the ``kinds`` given join others of their kind where that saves work:

    * craft: tasks of one model, attack (with its parameters), surface and examples, at different budgets,
      whose attack fuses budgets, form one job (one batch with a budget per example);
    * score: tasks that score one model's surface on different crafted sets form one job (one checkpoint
      load, one clean pass of the images they share; ``steps.run_score_fused``).

    Every other task is its own job. A stochastic defense is never fused: its randomness is drawn per
    forward pass from torch's global generator, seeded per task, so a fused job would draw other noise
    than the tasks alone."""
    kinds = set(kinds)
    groups: dict[str, list[Task]] = {}
    jobs: list[list[Task]] = []
    for task in ready:
        same = _fusion_key(task, by_key) if task.kind in kinds else None
        if same is None:
            jobs.append([task])
            continue
        group = groups.setdefault(same, [])
        if task.kind == "craft" and any(t.config.get("budget") == task.config.get("budget") for t in group):
            jobs.append([task])  # the same budget twice (other seeds of the attack): no gain in fusing
            continue
        if not group:
            jobs.append(group)
        group.append(task)
    return jobs


def fused_kinds(fuse: bool | None, on_gpu: bool) -> tuple[str, ...]:
    """The kinds an executor's ``fuse`` option fuses: True all, False none, None (the default) scoring
    everywhere and crafting on GPUs only: on the CPU a fused craft batch measured slower than the budgets
    one by one (``advbench bench scheduler``: bigger batches fall out of cache), on a GPU it fills the device;
    fused scoring skips repeated work on any device."""
    if fuse is None:
        return ("craft", "score") if on_gpu else ("score",)
    return FUSIBLE_KINDS if fuse else ()


def _fusion_key(task: Task, by_key: dict[str, Task]) -> str | None:
    """What tasks must share to be fused with ``task`` (None: it runs alone)."""
    if "fused" not in task_steps.get(task.kind).meta or _stochastic(by_key.get(task.deps[0])):
        return None
    if task.kind == "craft":
        if not _fuses(task):
            return None
        shared = {k: v for k, v in task.config.items() if k != "budget"}
    elif task.kind == "score":
        if task.config.get("examples") != "crafted" or len(task.deps) != 2:
            return None
        shared = dict(task.config)
    else:
        return None
    # Crafts share every dependency (the attacked model); scores only the scoring model, not the crafted set.
    return json.dumps({"kind": task.kind, "model": task.deps[0], **shared}, sort_keys=True, default=str)


def _stochastic(train: Task | None) -> bool:
    name = (train.config.get("defense") or {}).get("name") if train is not None else None
    return name is None or bool(getattr(defenses.get(name).factory, "stochastic", False))


def _fuses(task: Task) -> bool:
    return _attack_fuses(json.dumps(task.config["attack"], sort_keys=True, default=str))


@functools.lru_cache(maxsize=256)
def _attack_fuses(attack_json: str) -> bool:
    """Whether an attack config fuses budgets; cached, since the scheduler asks at every finished job."""
    attack = json.loads(attack_json)
    try:
        return bool(attacks.get(attack["name"]).build(**attack["params"]).fuses_budgets)
    except Exception:  # an attack that cannot even be built fails in its task, with its message
        return False


class Scheduler:
    def __init__(self, backend: WorkerBackend, *, fuse: Iterable[str] = FUSIBLE_KINDS, max_retries: int = 2,
                 echo: Callable[[str], None] = print, poll_s: float = 2.0):
        self.backend = backend
        self.fuse = tuple(fuse)  # the task kinds whose ready tasks are fused into jobs (fusion_groups)
        self.max_retries = max_retries  # re-runs of a task after its worker died, before it counts as failed
        self.echo = echo
        self.poll_s = poll_s

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> ScheduleSummary:
        try:
            with Claims(ctx.store_dir) as claims:
                return self._run(plan, ctx, store, claims)
        finally:
            self.backend.close()

    def _run(self, plan: Plan, ctx: RunContext, store: Store, claims: Claims) -> ScheduleSummary:
        by_key = {t.key: t for t in plan.tasks}
        healer = StoreHealer(plan, store, self.echo)
        healer.check_done_artifacts()
        done = store.done_keys(plan.keys)
        summary = ScheduleSummary(planned=len(plan.tasks), already_done=len(done))
        costs = TaskCosts(plan, store.wall_times(plan.keys), store.mean_wall_times())
        progress = _Progress(self.echo, costs, [t for t in plan.tasks if t.key not in done], bar=ctx.progress)
        cause: dict[str, str] = {}  # failed or skipped task -> label of the failed task behind it
        skipped_by: Counter[str] = Counter()
        deaths: Counter[str] = Counter()  # task -> times a worker died running it
        held: set[str] = set()  # claimed by another run
        running: dict[str, Job] = {}
        memory = {slot: deque(maxlen=AFFINITY_MEMORY) for slot in self.backend.slots}
        waiting_said = False
        try:
            while True:
                for task in plan.tasks:  # downstream of a failure: skipped, said once per failure at the end
                    failed_dep = next((d for d in task.deps if d in cause), None)
                    if task.key not in done and task.key not in cause and failed_dep is not None:
                        cause[task.key] = cause[failed_dep]
                        skipped_by[cause[task.key]] += 1
                        summary.skipped.append(task.label)
                        progress.drop(task)
                in_flight = {t.key for job in running.values() for t in job.tasks}
                ready = [t for t in plan.tasks if t.key not in done and t.key not in cause and t.key not in in_flight
                         and t.key not in held and all(d in done for d in t.deps)]
                groups = fusion_groups(ready, by_key, self.fuse)
                jobs = sorted((Job(g, costs.total(g)) for g in groups), key=lambda j: -j.cost)
                for slot in [s for s in self.backend.slots if s not in running]:
                    job = self._pick(jobs, slot, memory, running)
                    if job is None:
                        break
                    jobs.remove(job)
                    taken = []
                    for task in job.tasks:
                        claim = claims.take(store, task.key)
                        if claim == "claimed":
                            taken.append(task)
                        elif claim == "done":
                            done.add(task.key)
                            progress.drop(task)
                        else:
                            held.add(task.key)
                    if not taken:
                        continue
                    job = Job(taken, costs.total(taken))
                    upstream = {d: by_key[d] for t in taken for d in t.deps}
                    self.backend.submit(slot, taken, upstream, ctx)
                    running[slot] = job
                    waiting_said = False
                if not running:
                    if not held:
                        break
                    if not waiting_said:
                        self.echo(claims.waiting_line(store, list(held)))
                        waiting_said = True
                    time.sleep(self.poll_s)
                    done, held = store.done_keys(plan.keys), set()
                    continue
                for finished in self.backend.wait(self.poll_s if held else None):
                    job = running.pop(finished.slot)
                    for task in job.tasks:
                        claims.release(store, task.key)
                    if finished.outcomes is None:
                        self._worker_died(finished, job, deaths, cause, summary, store, ctx, progress)
                        memory[finished.slot].clear()
                        continue
                    memory[finished.slot].append(job.model)
                    summary.fused_jobs += len(job.tasks) > 1
                    repaired: dict[str, bool] = {}  # a fused job's tasks all report its one broken artifact
                    for task, (status, error) in zip(job.tasks, finished.outcomes):
                        if status == "broken":  # re-run the producer of the damaged artifact, then this task
                            if error not in repaired:
                                repaired[error] = healer.broken(error)
                            if repaired[error]:
                                continue
                            status, error = "failed", f"artifact {error} is broken again after re-running its task"
                        summary.ran += 1
                        summary.placements[task.key] = finished.where
                        if status == "failed":
                            cause[task.key] = task.label
                            summary.failed.append((task.label, error or ""))
                            progress.failed(task, error or "")
                        else:
                            healer.after_done(task)
                            costs.record(task, finished.wall_s / len(job.tasks))
                            progress.done(task, finished.wall_s / len(job.tasks), finished.where, len(job.tasks))
                    done = store.done_keys(plan.keys)
                if held:  # look again at what the other run holds
                    done, held = store.done_keys(plan.keys), set()
        finally:
            progress.close()
        for root, n in skipped_by.items():
            self.echo(f"skipped {n} task{'s' if n != 1 else ''} that need {root!r}, which failed")
        return summary

    @staticmethod
    def _pick(jobs: list[Job], slot: str, memory: dict[str, deque], running: dict[str, Job]) -> Job | None:
        """The job this worker should run next: the longest, where holding its model already counts double
        and a model that another worker holds counts half."""
        if not jobs:
            return None
        elsewhere = {m for s, models in memory.items() if s != slot for m in models}

        def priority(job: Job) -> float:
            if job.model in memory[slot]:
                return 2 * job.cost
            return job.cost / 2 if job.model in elsewhere else job.cost

        return max(jobs, key=priority)  # max keeps the first (the longest) among equals

    def _worker_died(self, finished: Finished, job: Job, deaths: Counter, cause: dict[str, str],
                     summary: ScheduleSummary, store: Store, ctx: RunContext, progress: "_Progress") -> None:
        self.backend.replace(finished.slot)
        for task in job.tasks:
            deaths[task.key] += 1
        attempts = max(deaths[t.key] for t in job.tasks)
        if attempts <= self.max_retries:
            self.echo(f"{job.label}: worker {finished.slot} died ({finished.died}); replaced it, retrying "
                      f"({attempts} of {self.max_retries} retries)")
            return
        reason = f"WorkerDied: the worker running it died {attempts} times; last: {finished.died}"
        for task in job.tasks:
            store.mark_failed(task, reason, wall_time_s=finished.wall_s, provenance=ctx.provenance())
            cause[task.key] = task.label
            summary.ran += 1
            summary.failed.append((task.label, reason))
            progress.failed(task, reason)


class _Progress:
    """One line per finished task, and (on a terminal) an overall bar in estimated seconds of work, so tqdm's
    ETA is the cost estimate's, corrected by how fast the run goes."""

    def __init__(self, echo: Callable[[str], None], costs: TaskCosts, todo: list[Task], *, bar: bool):
        self.echo, self.costs = echo, costs
        self.estimate = {t.key: costs.seconds(t) for t in todo}
        self.total, self.finished = len(todo), 0
        self.bar = tqdm(total=round(sum(self.estimate.values()), 1), unit="s of work", desc="run",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]"
                        ) if bar and todo else None
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.finished}/{self.total} tasks")

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            self.echo(line)

    def _advance(self, task: Task) -> None:
        self.finished += 1
        if self.bar is not None:
            self.bar.update(round(self.estimate.pop(task.key, 0.0), 1))
            self._postfix()
        else:
            self.estimate.pop(task.key, None)

    def done(self, task: Task, seconds: float, where: str, batch_of: int = 1) -> None:
        self._advance(task)
        left = self.estimate and duration(sum(self.costs.seconds(t) for t in self._left_tasks()))
        eta = f", about {left} left" if left else ""
        what = "budget" if task.kind == "craft" else "crafted set"
        fused = f" (fused with {batch_of - 1} other {what}{'s' if batch_of > 2 else ''})" if batch_of > 1 else ""
        self._say(f"[{self.finished}/{self.total}] {task.label}: {seconds:.1f}s on {where}{fused}{eta}")

    def failed(self, task: Task, error: str) -> None:
        self._advance(task)
        self._say(f"[{self.finished}/{self.total}] {task.label}: FAILED ({error})")

    def drop(self, task: Task) -> None:
        """A task that will not run here (skipped, or stored by another run meanwhile)."""
        if task.key in self.estimate:
            self.total -= 1
            if self.bar is not None:
                self.bar.total = round(self.bar.total - self.estimate[task.key], 1)
                self._postfix()
            del self.estimate[task.key]

    def _left_tasks(self) -> list[Task]:
        return [self.costs.by_key[k] for k in self.estimate]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
