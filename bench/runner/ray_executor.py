"""Ray executor: the scheduler's workers as Ray actors, on one machine or a cluster.

The same policy as the one-machine pool (``bench.runner.scheduler``: longest first, model affinity, fused
batches) and the same run loop (``bench.runner.loop``: claims, healing, retries of a dead worker's tasks;
the progress bar) drive a set of Ray actors instead of local processes. Each actor asks Ray for
``gpus_per_worker`` of a GPU (0.25: four MNIST workers share one GPU; Ray sets each actor's
CUDA_VISIBLE_DEVICES) and one CPU, and keeps its trained defenses cached between the jobs it is sent, as
a pool worker does. An actor that dies (its node lost, the OOM killer) is replaced and its tasks retried.

Workers write the store directory themselves, which must therefore be a path every node sees (SQLite in
WAL mode handles the concurrent writers of one host; across hosts use a shared file system with POSIX
locks). Artifacts are named by task key, so a node that finds one stored does not redo it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from typing import Callable

from ..errors import UserError
from ..numerics import PORTABLE_ENV
from ..plan import Plan, Task
from ..registry import executors
from ..store import Store
from .context import RunContext
from .executor import RunSummary
from .loop import Finished
from .scheduler import Scheduler, fused_kinds


class _RayWorker:
    """One worker: runs the jobs it is sent through ``run_fused`` on its GPU share (or the CPU)."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)

    def run(self, tasks: list[Task], upstream: dict[str, Task], ctx: RunContext):
        import ray
        import torch

        from .tasks import run_fused

        gpus = ray.get_gpu_ids()
        # A GPU share: Ray made its GPU the only visible one. Without CUDA (a CPU-only test cluster that
        # declares GPUs) the run's own device stays.
        device = "cuda:0" if gpus and torch.cuda.is_available() else ctx.device
        start = time.perf_counter()
        outcomes = run_fused(tasks, upstream, replace(ctx, device=device, progress=False))
        where = f"{socket.gethostname()} " + (f"GPU {','.join(str(g) for g in gpus)}" if gpus else "CPU")
        return outcomes, time.perf_counter() - start, where


class RayWorkers:
    """``count`` Ray actors, each asking for ``gpus`` of a GPU and one CPU."""

    def __init__(self, ray, count: int, gpus: float):
        self.ray, self.gpus = ray, gpus
        self._actor_class = ray.remote(num_cpus=1, num_gpus=gpus)(_RayWorker)
        self.slots = [f"ray#{i}" for i in range(count)]
        self._actors = {slot: self._actor_class.remote(1) for slot in self.slots}
        self._refs: dict = {}  # ref -> slot
        self._sent: dict[str, float] = {}

    def submit(self, slot: str, tasks: list[Task], upstream: dict[str, Task], ctx: RunContext) -> None:
        self._refs[self._actors[slot].run.remote(tasks, upstream, ctx)] = slot
        self._sent[slot] = time.perf_counter()

    def wait(self, timeout: float | None) -> list[Finished]:
        ray = self.ray
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        finished = []
        for ref in ready:
            slot = self._refs.pop(ref)
            try:
                outcomes, wall, where = ray.get(ref)
                finished.append(Finished(slot, outcomes, wall, where=where))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                finished.append(Finished(slot, None, time.perf_counter() - self._sent[slot], where=slot,
                                         died=f"Ray worker died: {type(e).__name__}"))
        return finished

    def actor(self, slot: str):
        return self._actors[slot]

    def replace(self, slot: str) -> None:
        self.ray.kill(self._actors[slot])
        self._actors[slot] = self._actor_class.remote(1)

    def close(self) -> None:
        for actor in self._actors.values():
            self.ray.kill(actor)


@executors.register("ray", options=("workers", "gpus_per_worker", "fuse"))  # --devices: refused with a reason
class RayExecutor:
    """Workers as Ray actors (pip install 'advbench[ray]'), on the cluster that the RAY_ADDRESS environment
    variable names, else a local one: --workers N in all (default: as many as the cluster fits);
    --gpus-per-worker X each (a share such as 0.25, or a whole number; default 1 with a CUDA device, else 0);
    --no-fuse as for pool.

    ``address`` (Python only) overrides RAY_ADDRESS; scheduling and fusing as ``PoolExecutor``'s."""

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float | None = None,
                 fuse: bool | None = None, devices: str | None = None, echo: Callable[[str], None] = print,
                 max_retries: int = 2):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray: Ray is not installed; pip install 'advbench[ray]'") from None
        if devices is not None:
            raise UserError("--executor ray: the cluster's resources decide the devices; use --gpus-per-worker "
                            "and --workers instead of --devices")
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        whole = gpus_per_worker is None or gpus_per_worker == int(gpus_per_worker)
        if gpus_per_worker is not None and (gpus_per_worker < 0 or (gpus_per_worker > 1 and not whole)):
            raise UserError(f"--gpus-per-worker must be a share of one GPU (0 to 1) or a whole number, "
                            f"got {gpus_per_worker}")
        self.ray = ray
        self.workers, self.gpus_per_worker, self.fuse, self.echo = workers, gpus_per_worker, fuse, echo
        self.max_retries = max_retries
        self.last_workers: RayWorkers | None = None
        if not ray.is_initialized():
            # Workers compute with the driver's pinned CPU kernels (bench/numerics.py), on every node.
            pinned = {k: os.environ[k] for k in PORTABLE_ENV if k in os.environ}
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     **({"runtime_env": {"env_vars": pinned}} if pinned else {}))

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        resources = self.ray.cluster_resources()
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (
            1.0 if ctx.device.startswith("cuda") else 0.0)
        if gpus > resources.get("GPU", 0):
            raise UserError(f"--gpus-per-worker {gpus:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs")
        fit = int(resources.get("GPU", 0) / gpus) if gpus else int(resources.get("CPU", 1))
        count = self.workers or max(1, min(fit, int(resources.get("CPU", 1))))
        self.echo(f"ray: {count} worker{'s' if count != 1 else ''}"
                  + (f", {gpus:g} GPU each" if gpus else ", CPU only"))
        self.last_workers = RayWorkers(self.ray, count, gpus)
        fuse = fused_kinds(self.fuse, gpus > 0)
        return Scheduler(self.last_workers, fuse=fuse, echo=self.echo,
                         max_retries=self.max_retries).run(plan, ctx, store)
