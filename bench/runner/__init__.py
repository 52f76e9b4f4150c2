"""Running a plan: the run context, task steps registered by kind, and executors registered by name.

* ``context``: ``RunContext``, the task's dataset and the trained-defense cache;
* ``steps`` / ``detector_steps``: what each task kind does (``bench.registry.task_steps``);
* ``tasks``: ``run_task``, one task run and recorded;
* ``executor``: the ``Executor`` protocol and ``RunSummary``;
* ``loop``: ``run_loop``, the run loop of every built-in executor (claims, healing, skips, retries, the
  summary), driving a ``WorkerBackend`` (where jobs run) in a ``Policy``'s order; the built-in executors
  (``bench.registry.executors``): ``local`` (this process, plan order), ``pool`` (worker processes) and
  ``ray_executor`` (Ray actors), the last two in ``scheduler``'s order.

Where to add a task kind or an executor: docs/architecture.md.
"""

from .context import RunContext, resolve_device, trained_defense
from .executor import Executor, RunSummary, get_executor
from .loop import Finished, Policy, WorkerBackend, run_loop
from .tasks import run_task

__all__ = ["Executor", "Finished", "Policy", "RunContext", "RunSummary", "WorkerBackend", "get_executor",
           "resolve_device", "run_loop", "run_task", "trained_defense"]
