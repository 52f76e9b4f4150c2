"""The pool's and Ray's policy: which ready tasks run next, on which worker (``bench.runner.loop`` runs it).

``Scheduler`` drives a ``WorkerBackend`` with many slots (``bench.runner.pool``: processes, one or more per
device; ``bench.runner.ray_executor``: Ray actors, fractional GPUs) through ``run_loop``, which claims,
heals, retries a dead worker's tasks, skips downstream of failures and writes the summary. What it decides:

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
* **skips at once**: each round, every task downstream of a failure is skipped before anything else, so
  the progress counts (``progress.WorkersProgress``: one line per finished task, where it ran, how long,
  and a bar whose ETA comes from the cost estimates) drop it at once.

Results are written by the workers through ``run_task`` (SQLite in WAL mode, each task one transaction);
the loop only reads the store, and records the failure of a task whose worker died.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from ..defense import defense_class_flag
from ..plan import Plan, Task
from ..plan.specs import CraftedScoreSpec, CraftSpec
from ..registry import attacks, defenses, task_steps
from ..store import Store
from .batching import model_key
from .context import RunContext
from .executor import RunSummary
from .loop import Assignment, RunLoop, WorkerBackend, run_loop
from .progress import WorkersProgress

AFFINITY_MEMORY = 8  # models a worker is assumed to hold: the trained-defense cache's size (context.py)


@dataclass
class Job:
    """Ready tasks that one worker would run at once: a task, or tasks fused into one (``fusion_groups``)."""

    tasks: list[Task]
    cost: float

    @property
    def model(self) -> str:
        return model_key(self.tasks[0])


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
        if task.kind == "craft" and any(t.spec.budget == task.spec.budget for t in group):
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
    if "fused" not in task_steps.get(task.kind).meta or not task.config or _stochastic(by_key.get(task.model)):
        return None
    spec = task.spec
    if isinstance(spec, CraftSpec):  # crafts that differ only in budget: every dependency shared
        if not _attack_fuses(json.dumps(spec.attack.payload(), sort_keys=True, default=str)):
            return None
        shared = replace(spec, budget=None)
    elif isinstance(spec, CraftedScoreSpec):  # scores share only the scoring model, not the crafted set
        shared = replace(spec, craft="")
    else:
        return None
    return json.dumps({"kind": task.kind, "payload": shared.payload(), "upstream": shared.upstream()},
                      sort_keys=True, default=str)


def _stochastic(train: Task | None) -> bool:
    """Whether the trained defense draws randomness (unknown, None: treated as if it did, never fused)."""
    if train is None or train.kind != "train" or not train.config:
        return True
    return bool(defense_class_flag(defenses.get(train.spec.defense.name).factory, "stochastic"))


@functools.lru_cache(maxsize=256)
def _attack_fuses(attack_json: str) -> bool:
    """Whether an attack config fuses budgets; cached, since the scheduler asks at every finished job."""
    attack = json.loads(attack_json)
    try:
        return bool(attacks.get(attack["name"]).build(**attack["params"]).fuses_budgets)
    except Exception:  # an attack that cannot even be built fails in its task, with its message
        return False


class Scheduler:
    """The policy above, for ``backend``'s workers; ``run`` runs a plan with it (``run_loop``)."""

    def __init__(self, backend: WorkerBackend, *, fuse: Iterable[str] = FUSIBLE_KINDS, max_retries: int = 2,
                 echo: Callable[[str], None] = print, poll_s: float = 2.0):
        self.backend = backend
        self.fuse = tuple(fuse)  # the task kinds whose ready tasks are fused into jobs (fusion_groups)
        self.max_retries = max_retries  # re-runs of a task after its worker died, before it counts as failed
        self.echo = echo
        self.poll_s = poll_s
        self.memory: dict[str, deque] = {}  # slot -> the models its worker holds, latest last

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        self.memory = {slot: deque(maxlen=AFFINITY_MEMORY) for slot in self.backend.slots}
        return run_loop(plan, ctx, store, self.backend, self, WorkersProgress, echo=self.echo, poll_s=self.poll_s,
                        max_retries=self.max_retries)

    def assign(self, run: RunLoop, free: list[str]) -> list[Assignment]:
        for task in run.plan.tasks:  # downstream of a failure: skipped now, so the progress counts drop it
            run.skip_if_upstream_failed(task)
        in_flight = run.in_flight
        ready = [t for t in run.plan.tasks if t.key not in run.done and t.key not in run.cause
                 and t.key not in in_flight and t.key not in run.held and all(d in run.done for d in t.deps)]
        groups = fusion_groups(ready, run.by_key, self.fuse)
        jobs = sorted((Job(g, run.costs.total(g)) for g in groups), key=lambda j: -j.cost)
        assigned = []
        for slot in free:
            job = self._pick(jobs, slot, self.memory, run.running)
            if job is None:
                break
            jobs.remove(job)
            assigned.append((slot, job.tasks))
        return assigned

    def waiting(self, run: RunLoop) -> list[str]:
        return list(run.held)

    def ended(self, slot: str, tasks: list[Task], died: bool) -> None:
        if died:  # a fresh worker holds no model
            self.memory[slot].clear()
        else:
            self.memory[slot].append(model_key(tasks[0]))

    @staticmethod
    def _pick(jobs: list[Job], slot: str, memory: dict[str, deque], running: dict[str, list[Task]]) -> Job | None:
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
