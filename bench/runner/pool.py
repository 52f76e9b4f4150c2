"""The one-machine pool: worker processes on the machine's devices, in ``bench.runner.scheduler``'s order.

``advbench run SUITE --devices auto|cpu|cuda:0,cuda:1 --workers N`` starts N worker processes per device
(``spawn``ed, so CUDA works in them and each inherits the run's pinned numerics, bench/numerics.py). The
CPU cores are divided between the workers (``torch.set_num_threads``): two torch processes that each use
every core thrash. A worker runs the jobs it is sent one after another through ``run_fused`` (which
records each task in the store) and keeps its trained-defense cache between them, which is what the
scheduler's affinity exploits. A worker that dies is noticed by its process sentinel and replaced (the
run loop, ``bench.runner.loop``, retries its tasks).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace
from multiprocessing.connection import wait as wait_for
from typing import Callable

import torch

from ..errors import UserError
from ..plan import Plan, Task
from ..registry import executors
from ..store import Store
from .context import RunContext
from .executor import RunSummary
from .loop import Finished
from .scheduler import Scheduler, fused_kinds


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def parse_devices(spec: str) -> list[str]:
    """``auto`` (every visible CUDA device, else the CPU), ``cpu``, ``cuda`` (all CUDA devices) or a comma
    list ``cuda:0,cuda:1``; a ``UserError`` naming ``--devices`` for what this machine does not have."""
    spec = spec.strip()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    if spec == "cuda":
        if not count:
            raise UserError("--devices cuda: no CUDA device is visible to PyTorch on this machine")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    for device in devices:
        if device == "cpu":
            continue
        index = device.removeprefix("cuda:")
        if not device.startswith("cuda:") or not index.isdigit():
            raise UserError(f"--devices: {device!r} is not a device; use auto, cpu, cuda or cuda:0,cuda:1,...")
        if int(index) >= count:
            raise UserError(f"--devices: {device} is not visible to PyTorch here ({count} CUDA device"
                            f"{'s' if count != 1 else ''})")
    if len(set(devices)) != len(devices) or not devices:
        raise UserError(f"--devices: {spec!r} names no device or one twice")
    return devices


def _worker_main(conn, device: str, threads: int) -> None:
    """A worker process: run each job it is sent, send back the outcomes, until it is sent None."""
    from .tasks import run_fused

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    torch.set_num_threads(threads)
    while True:
        message = conn.recv()
        if message is None:
            return
        tasks, upstream, ctx = message
        start = time.perf_counter()
        outcomes = run_fused(tasks, upstream, replace(ctx, device=device, progress=False))
        conn.send((outcomes, time.perf_counter() - start))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        hint = " (kill -9, or the out-of-memory killer)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode}"


class ProcessWorkers:
    """``workers`` processes per device, each with ``threads`` torch threads."""

    def __init__(self, devices: list[str], workers: int, threads: int):
        self._mp = mp.get_context("spawn")
        self.threads = threads
        self.device = {f"{d}#{i}": d for d in devices for i in range(workers)}
        self.slots = list(self.device)
        self._procs: dict[str, mp.Process] = {}
        self._conns: dict = {}
        self._busy: dict[str, float] = {}  # slot -> when its job was sent
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: str) -> None:
        parent, child = self._mp.Pipe()
        proc = self._mp.Process(target=_worker_main, args=(child, self.device[slot], self.threads), daemon=True,
                                name=f"advbench-worker-{slot}")
        proc.start()
        child.close()
        self._procs[slot], self._conns[slot] = proc, parent

    def pid(self, slot: str) -> int | None:
        return self._procs[slot].pid

    def submit(self, slot: str, tasks: list[Task], upstream: dict[str, Task], ctx: RunContext) -> None:
        self._conns[slot].send((tasks, upstream, ctx))
        self._busy[slot] = time.perf_counter()

    def wait(self, timeout: float | None) -> list[Finished]:
        busy = list(self._busy)
        handles = {self._conns[s]: s for s in busy} | {self._procs[s].sentinel: s for s in busy}
        finished: dict[str, Finished] = {}
        for handle in wait_for(list(handles), timeout):
            slot = handles[handle]
            if slot in finished:
                continue
            conn = self._conns[slot]
            try:
                if conn.poll():
                    outcomes, wall = conn.recv()
                    finished[slot] = Finished(slot, outcomes, wall, where=slot)
                    continue
            except (EOFError, OSError):
                pass
            proc = self._procs[slot]
            proc.join(timeout=5)
            finished[slot] = Finished(slot, None, time.perf_counter() - self._busy[slot], where=slot,
                                      died=_death(proc.exitcode))
        for slot in finished:
            del self._busy[slot]
        return list(finished.values())

    def replace(self, slot: str) -> None:
        proc = self._procs[slot]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        self._conns[slot].close()
        self._start(slot)

    def close(self) -> None:
        for conn in self._conns.values():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 10
        for proc in self._procs.values():
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():  # interrupted mid-task: its task is not recorded, and the rerun does it
                proc.kill()
                proc.join()
        for conn in self._conns.values():
            conn.close()


@executors.register("pool")
class PoolExecutor:
    """Worker processes on this machine: --devices auto (every CUDA device, else the CPU), cpu, cuda or
    cuda:0,cuda:1; --workers N per device (default 1; on the CPU the cores are divided between them). Tasks
    run longest first, preferably on a worker that already loaded their model; score tasks are fused across
    crafted sets, and on GPUs craft tasks across budgets (--no-fuse: every task alone). --workers or --devices
    alone pick this executor.

    The scheduling is ``bench.runner.scheduler``'s; ``fuse`` (None, True, False) maps to the fused task kinds
    by ``fused_kinds``."""

    def __init__(self, devices: str | None = None, workers: int | None = None, fuse: bool | None = None,
                 echo: Callable[[str], None] = print, max_retries: int = 2, threads: int | None = None):
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        # Checked now, before the run writes anything; None: the run's device (--device or the suite's).
        self.devices = parse_devices(devices) if devices is not None else None
        self.workers, self.fuse, self.echo, self.max_retries = workers, fuse, echo, max_retries
        self.threads = threads  # torch threads per worker; None: the cores divided among the workers
        self.last_workers: ProcessWorkers | None = None  # for tests and benchmarks: the pool of the last run

    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary:
        devices = self.devices or parse_devices(ctx.device)
        workers = self.workers or 1
        threads = self.threads or max(1, usable_cores() // (workers * len(devices)))
        self.echo(f"pool: {workers} worker{'s' if workers != 1 else ''} on each of {', '.join(devices)}, "
                  f"{threads} thread{'s' if threads != 1 else ''} each")
        self.last_workers = ProcessWorkers(devices, workers, threads)
        fuse = fused_kinds(self.fuse, any(d.startswith("cuda") for d in devices))
        return Scheduler(self.last_workers, fuse=fuse, echo=self.echo,
                         max_retries=self.max_retries).run(plan, ctx, store)
