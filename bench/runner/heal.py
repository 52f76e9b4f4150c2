"""The store heals itself: a missing or damaged artifact re-runs the task that made it.

Every artifact's SHA-256 and size are recorded when it is written (``Store.save_artifact``), and every
done task records the hashes of the upstream artifacts it read (``tasks.inputs``). Then:

* before a run, every done task of the plan whose step writes an artifact (``artifact=True`` in its
  registration) has its file checked for existence and size (cheap: nothing is read), and its SHA-256
  where a task of this run will read it; a broken one is made not-done, so the run re-runs it first, and
  says so in one line;
* when a task reads an artifact whose bytes do not match their hash (a flipped byte), the read raises
  ``ArtifactBroken``; the executor re-runs the producer, then the task (``StoreHealer.broken``);
* after a producer re-runs, the done tasks that read its old output are recomputed only if the new
  output's hash differs from the one they recorded (``StoreHealer.after_done``): training is
  deterministic on one machine, so a re-made checkpoint usually keeps every downstream row.

``check_store`` walks a whole store for ``advbench store check [--repair]``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..plan import Plan, Task
from ..registry import task_steps
from ..store import Store

# Re-runs of one producer within a run before its consumer is failed instead (a producer whose output
# breaks again at once is a disk or code problem, not a stray file).
MAX_REPAIRS = 2


def writes_artifact(kind: str) -> bool:
    return bool(task_steps.get(kind).meta.get("artifact"))


@dataclass
class StoreHealer:
    """What an executor calls to heal the store around its run of ``plan``."""

    plan: Plan
    store: Store
    echo: Callable[[str], None]
    repairs: Counter = field(default_factory=Counter)  # producer key -> re-runs this run

    def __post_init__(self) -> None:
        self.by_key = {t.key: t for t in self.plan.tasks}
        self.dependents: dict[str, list[Task]] = {}
        for task in self.plan.tasks:
            for dep in task.deps:
                self.dependents.setdefault(dep, []).append(task)
        self.old_hash: dict[str, str | None] = {}  # producer key -> its hash before the repair

    def check_done_artifacts(self) -> None:
        """Before the run: make every done producer whose artifact is missing or resized not-done; those a
        task of this run will read are hashed too (they are read anyway), the others only sized."""
        done = self.store.done_keys(self.plan.keys)
        needed = {dep for t in self.plan.tasks if t.key not in done for dep in t.deps}
        for task in self.plan.tasks:
            if task.key in done and writes_artifact(task.kind):
                problem = self.store.artifact_problem(task.key, read=task.key in needed)
                if problem:
                    self._rerun(task, problem)

    def broken(self, key: str) -> bool:
        """A task found the artifact ``key`` broken: re-run its producer (True), unless it was already
        re-run ``MAX_REPAIRS`` times this run or is not in the plan (False: fail the reader)."""
        producer = self.by_key.get(key)
        if producer is None or self.repairs[key] >= MAX_REPAIRS:
            return False
        self._rerun(producer, self.store.artifact_problem(key) or "unreadable")
        return True

    def after_done(self, task: Task) -> None:
        """After ``task`` ran: if it was re-run to repair its artifact and the new one differs, recompute the
        done tasks that read the old one."""
        if task.key not in self.old_hash:
            return
        old = self.old_hash.pop(task.key)
        record = self.store.artifact_record(task.key)
        new = record[0] if record else None
        if new is not None and new == old:
            return
        done = self.store.done_keys([t.key for t in self.dependents.get(task.key, [])])
        for dependent in self.dependents.get(task.key, []):
            if dependent.key in done and self.store.task_inputs(dependent.key).get(task.key) != new:
                self.store.forget(dependent.key)
                self.echo(f"{dependent.label}: its input from {task.label!r} changed: recomputing it")

    def _rerun(self, task: Task, problem: str) -> None:
        record = self.store.artifact_record(task.key)
        self.old_hash.setdefault(task.key, record[0] if record else None)
        self.repairs[task.key] += 1
        self.store.forget(task.key)
        self.echo(f"artifact of {task.label} {problem}: re-running it")


# --------------------------------------------------------------------------- advbench store check


@dataclass
class StoreReport:
    broken: list[tuple[str, str, str]] = field(default_factory=list)   # (key, label, problem)
    orphans: list[str] = field(default_factory=list)                   # artifact files no done task owns
    failed: list[tuple[str, str]] = field(default_factory=list)        # (key, label)

    @property
    def clean(self) -> bool:
        return not (self.broken or self.orphans or self.failed)

    def lines(self) -> list[str]:
        out = [f"broken artifact of {label} ({key}): {problem}" for key, label, problem in self.broken]
        out += [f"artifact without a done task: {name}" for name in self.orphans]
        out += [f"failed task: {label} ({key})" for key, label in self.failed]
        return out


def check_store(store: Store) -> StoreReport:
    """Every done task that wrote an artifact, its file against the recorded size and SHA-256; artifact
    files no done task owns (a crashed write's temporary file, a task made not-done); failed tasks."""
    report = StoreReport()
    owners = set()
    for key, kind, label, status in store.task_rows():
        if status == "failed":
            report.failed.append((key, label))
        elif status == "done" and kind in task_steps and writes_artifact(kind):
            owners.add(f"{key}.pt")
            problem = store.artifact_problem(key)
            if problem:
                report.broken.append((key, label, problem))
    report.orphans = sorted(p.name for p in store.artifacts.iterdir() if p.name not in owners)
    return report


def repair_store(store: Store, report: StoreReport) -> None:
    """Drop what is broken, so the next run recomputes it: broken artifacts and their tasks, orphan files,
    failed tasks' records."""
    for key, _, _ in report.broken:
        store.drop_artifact(key)
        store.forget(key)
    for name in report.orphans:
        (store.artifacts / name).unlink(missing_ok=True)
    for key, _ in report.failed:
        store.forget(key)
