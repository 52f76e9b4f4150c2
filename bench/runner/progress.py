"""What a run says as its tasks end: the reporters (``bench.runner.loop.Progress``) the run loop calls, and
how a duration is written (the estimates themselves: ``bench.runner.cost``).

Two reporters, one line per task that ran:

* ``SequentialProgress`` (the local executor): ``[3/21] label: 1.2s, about 3m05s left``, counting the
  tasks started so far, out of those plus what is left to do;
* ``WorkersProgress`` (pool and Ray): ``[3/21] label: 1.2s on cpu#0 (fused with 1 other budget), about
  3m05s left``, counting the tasks ended, out of those to do when the run started less those skipped or
  stored by another run; on a terminal also an overall tqdm bar in estimated seconds of work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..plan import Task

if TYPE_CHECKING:
    from .loop import RunLoop


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SequentialProgress:
    """The local executor's lines; no bar."""

    def __init__(self, run: "RunLoop"):
        self.run = run
        self.started_count = 0  # a task re-run after repairing its input counts twice
        self.prefix = ""

    def _left(self, done: set[str], running: list[Task] = ()) -> list[Task]:
        skip = done | set(self.run.cause) | {t.key for t in running}
        return [t for t in self.run.plan.tasks if t.key not in skip]

    def started(self, tasks: list[Task]) -> None:
        self.started_count += 1
        left = self._left(self.run.done, tasks)
        self.prefix = f"[{self.started_count}/{self.started_count + len(left)}] {tasks[0].label}"

    def done(self, task: Task, seconds: float, where: str, batch_of: int) -> None:
        left = self._left(self.run.store.done_keys(self.run.plan.keys))  # what the task's end changed included
        eta = f", about {duration(self.run.costs.total(left))} left" if left else ""
        self.run.echo(f"{self.prefix}: {seconds:.1f}s{eta}")

    def failed(self, task: Task, error: str) -> None:
        self.run.echo(f"{self.prefix}: FAILED ({error})")

    def drop(self, task: Task) -> None:
        pass  # what is left is read from the run's state

    def close(self) -> None:
        pass


class WorkersProgress:
    """The pool's and Ray's lines, and (on a terminal) an overall bar in estimated seconds of work, so tqdm's
    ETA is the cost estimate's, corrected by how fast the run goes."""

    def __init__(self, run: "RunLoop"):
        self.echo, self.costs = run.echo, run.costs
        todo = [t for t in run.plan.tasks if t.key not in run.done]
        self.estimate = {t.key: self.costs.seconds(t) for t in todo}
        self.total, self.finished = len(todo), 0
        self.bar = tqdm(total=round(sum(self.estimate.values()), 1), unit="s of work", desc="run",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]"
                        ) if run.ctx.progress and todo else None
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

    def started(self, tasks: list[Task]) -> None:
        pass

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
