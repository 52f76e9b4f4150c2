"""Running a plan: the run context, task steps registered by kind, and executors registered by name.

* ``context``: ``RunContext``, the task's dataset and the trained-defense cache;
* ``steps`` / ``detector_steps``: what each task kind does (``bench.registry.task_steps``);
* ``tasks``: ``run_task``, one task run and recorded;
* ``executor``: the ``Executor`` protocol and ``RunSummary``; ``local`` and ``ray_executor``: the two
  built-in executors (``bench.registry.executors``).

Where to add a task kind or an executor: docs/architecture.md.
"""

from .context import RunContext, resolve_device, trained_defense
from .executor import Executor, RunSummary, get_executor
from .tasks import run_task

__all__ = ["Executor", "RunContext", "RunSummary", "get_executor", "resolve_device", "run_task", "trained_defense"]
