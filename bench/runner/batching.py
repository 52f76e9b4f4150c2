"""The batch size a task runs with: the largest that fits its device, found once per model, halved on OOM.

A suite's ``batch_size`` is what attacks and evaluation use on the CPU, where a larger batch buys nothing.
On a CUDA device a small model at batch 256 leaves most of the GPU idle, so a task there starts at
``CUDA_START_BATCH`` (capped by the suite's examples only through the batches themselves) and, on
``torch.cuda.OutOfMemoryError``, frees the cache, halves and runs the task again, down to 1. The size that
fitted is remembered per (model, task kind) in this process, so the search happens once per model and
worker, not once per task. Task keys never include it (it does not change what is computed, only how
many examples share a pass); the task's record and its result rows carry it (``batch_size``).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from ..plan import Task

CUDA_START_BATCH = 4096

T = TypeVar("T")

# (model key, task kind, device) -> the batch size that last ran without running out of memory
_fitted: dict[tuple[str, str, str], int] = {}


def model_key(task: Task) -> str:
    """The trained model a task runs on (``Task.model``: its train task), for affinity and caching."""
    return task.model


def starting_batch_size(task: Task, device: str, configured: int) -> int:
    """Where a task's search starts: what fitted last time for this model and kind, else the suite's
    ``batch_size`` on CPU and ``max(batch_size, CUDA_START_BATCH)`` on CUDA."""
    remembered = _fitted.get((model_key(task), task.kind, device))
    if remembered is not None:
        return remembered
    return max(configured, CUDA_START_BATCH) if device.startswith("cuda") else configured


def run_with_backoff(task: Task, device: str, configured: int, run: Callable[[int], T],
                     echo: Callable[[str], None] | None = None) -> tuple[T, int]:
    """``run(batch_size)``, halving ``batch_size`` after each out-of-memory error; the result and the size
    that fitted. The last OOM (at batch size 1) propagates."""
    batch_size = starting_batch_size(task, device, configured)
    while True:
        try:
            result = run(batch_size)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if echo is not None:
                echo(f"{task.label}: out of memory at batch size {batch_size}; retrying at {batch_size // 2}")
            batch_size //= 2
            continue
        _fitted[(model_key(task), task.kind, device)] = batch_size
        return result, batch_size


def forget_fitted() -> None:
    """Drop the remembered sizes (tests)."""
    _fitted.clear()
