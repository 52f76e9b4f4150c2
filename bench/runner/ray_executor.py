"""Ray executor: the same task graph and task code, run as Ray tasks.

Each task becomes a Ray remote call whose arguments include the statuses of
its upstream tasks, so Ray orders the graph for us; a task whose upstream
failed returns "skipped" without running. Workers write to the same store
directory, which must therefore be on a file system every node sees (SQLite
in WAL mode handles the concurrent writers of one host; for many hosts use a
shared file system that supports POSIX locks). Tasks ask Ray for one GPU
each when the run's device is CUDA.
"""

from __future__ import annotations

import os

from ..errors import UserError
from ..numerics import PORTABLE_ENV
from ..plan import Plan, Task
from ..registry import executors
from ..store import Store
from .context import RunContext
from .executor import RunSummary
from .heal import StoreHealer
from .tasks import run_task


def _remote_task(task: Task, upstream: dict[str, Task], ctx: RunContext,
                 *upstream_results: tuple[str, str | None]) -> tuple[str, str | None]:
    # Ray resolves the upstream refs to their (status, error) results before calling this.
    if any(status != "done" for status, _ in upstream_results):
        return "skipped", None
    return run_task(task, upstream, ctx)


@executors.register("ray")
class RayExecutor:
    """Each task a Ray remote call, ordered by its upstream results (pip install 'advbench[ray]')."""

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray: Ray is not installed; pip install 'advbench[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            # Workers compute with the driver's pinned CPU kernels (bench/numerics.py), on every node.
            pinned = {k: os.environ[k] for k in PORTABLE_ENV if k in os.environ}
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     **({"runtime_env": {"env_vars": pinned}} if pinned else {}))

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        ray = self.ray
        gpus = 1 if ctx.device.startswith("cuda") else 0
        remote = ray.remote(num_gpus=gpus)(_remote_task)
        by_key = {t.key: t for t in plan.tasks}
        # A missing or resized artifact: its task runs again. (A byte flipped inside one fails its reader
        # here, which the next run then repairs; the local executor repairs it within the run.)
        StoreHealer(plan, store, print).check_done_artifacts()
        done = store.done_keys(plan.keys)
        summary = RunSummary(planned=len(plan.tasks), already_done=len(done))
        refs: dict[str, object] = {}
        for task in plan.tasks:  # topological order: upstream refs exist before they are needed
            if task.key in done:
                continue
            upstream_refs = [refs[d] for d in task.deps if d in refs]
            refs[task.key] = remote.remote(task, {k: by_key[k] for k in task.deps}, ctx, *upstream_refs)
        for key, ref in refs.items():
            status, error = ray.get(ref)
            if status == "broken":
                StoreHealer(plan, store, print).broken(error)  # made not-done: the next run re-makes it
                status, error = "failed", f"artifact {error} is missing or damaged; rerun to re-make it"
            if status == "failed":
                summary.ran += 1
                summary.failed.append((by_key[key].label, error or ""))
            elif status == "skipped":
                summary.skipped.append(by_key[key].label)
            else:
                summary.ran += 1
        return summary
