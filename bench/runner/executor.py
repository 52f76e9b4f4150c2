"""The executor protocol: what runs a plan's tasks, and the summary it returns.

An executor is registered by name in ``bench.registry.executors`` (``local`` and ``ray`` are built
in; another package adds one through the ``advbench.executors`` entry point) and built with the
command line's options (none for ``local``); ``advbench run --executor NAME`` picks it. It must run every task of the plan that the
store does not hold yet, each after the tasks in its ``deps``, through ``bench.runner.tasks.run_task``
(which records it), skip the tasks whose upstream failed, and say what happened in a ``RunSummary``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import UserError
from ..plan import Plan
from ..registry import UnknownName, executors
from ..store import Store
from .context import RunContext


@dataclass
class RunSummary:
    planned: int = 0
    already_done: int = 0
    ran: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (label, error)
    skipped: list[str] = field(default_factory=list)              # labels whose upstream failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


class Executor(Protocol):
    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary: ...


def get_executor(name: str, options: dict | None = None) -> Executor:
    """The executor registered as ``name``, built with the command line's ``options`` (--devices, --workers,
    --gpus-per-worker, --no-fuse: those given); a ``UserError`` with close matches if there is none, or
    naming the options it does not take."""
    try:
        entry = executors.get(name)
    except UnknownName as e:
        raise UserError(f"--executor: {e}") from None
    options = options or {}
    try:
        inspect.signature(entry.factory).bind(**options)
    except TypeError:
        flags = ", ".join("--no-fuse" if k == "fuse" else "--" + k.replace("_", "-") for k in sorted(options))
        raise UserError(f"--executor {name} does not take {flags}") from None
    return entry.factory(**options)
