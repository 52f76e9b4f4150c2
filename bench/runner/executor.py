"""The executor protocol: what runs a plan's tasks, and the summary it returns.

An executor is registered by name in ``bench.registry.executors`` (``local``, ``pool`` and ``ray`` are
built in; another package adds one through the ``advbench.executors`` entry point) and built with the
command line's options (``CLI_OPTIONS``: none for ``local``); ``advbench run --executor NAME`` picks it, and
checks the name and options before anything else (``check_executor``). ``advbench list executors`` shows the
options each takes: those its registration names (``options=("workers", ...)``), else those its factory
has a parameter for. It must run every task of the plan that the store does not hold yet, each after the
tasks in its ``deps``, through ``bench.runner.tasks.run_task`` (which records it), skip the tasks whose
upstream failed, and say what happened in a ``RunSummary``. The built-in ones are ``bench.runner.loop.run_loop``
(healing, claims, skips, retries, the summary) with a worker backend and a policy of their own; a new
executor should be too (docs/architecture.md).
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
    placements: dict[str, str] = field(default_factory=dict)      # task key -> where it ran
    fused_jobs: int = 0                                           # jobs that ran several tasks as one

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


class Executor(Protocol):
    def run(self, plan: Plan, ctx: RunContext, store: Store) -> RunSummary: ...


# The options ``advbench run`` passes an executor, by parameter name, and the flag that sets each.
CLI_OPTIONS = {"devices": "--devices", "workers": "--workers", "gpus_per_worker": "--gpus-per-worker",
               "fuse": "--no-fuse"}


def executor_flags(entry) -> list[str]:
    """The command-line flags (``CLI_OPTIONS``) that the executor ``entry`` takes, in that order: those its
    registration names (``options=(...)``, parameter names), else those its factory has a parameter for."""
    if "options" in entry.meta:
        return [flag for name, flag in CLI_OPTIONS.items() if name in entry.meta["options"]]
    try:
        params = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):
        return []
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return [flag for name, flag in CLI_OPTIONS.items() if takes_any or name in params]


def check_executor(name: str, options: dict | None = None):
    """The registry entry of executor ``name`` if it takes ``options`` (--devices, --workers, --gpus-per-worker,
    --no-fuse: those given), without building it; else a ``UserError`` with close matches and the registered
    names, or naming the options it does not take."""
    try:
        entry = executors.get(name)
    except UnknownName as e:
        listed = not e.known or "known: " in str(e)  # UnknownName lists the names when none is close
        known = "" if listed else f" (executors: {', '.join(e.known)}; advbench list executors)"
        raise UserError(f"--executor: {e}{known}") from None
    options = options or {}
    takes = executor_flags(entry)
    refused = [k for k in options if CLI_OPTIONS.get(k, "--" + k.replace("_", "-")) not in takes]
    if not refused:
        try:
            inspect.signature(entry.factory).bind(**options)
        except TypeError:  # a factory that cannot be built from the options alone
            refused = list(options)
        except ValueError:  # no signature to read
            pass
    if refused:
        flags = ", ".join(CLI_OPTIONS.get(k, "--" + k.replace("_", "-")) for k in refused)
        raise UserError(f"--executor {name} does not take {flags} (it takes {' '.join(takes) or 'none of them'})")
    return entry


def get_executor(name: str, options: dict | None = None) -> Executor:
    """The executor registered as ``name``, built with the command line's ``options`` (--devices, --workers,
    --gpus-per-worker, --no-fuse: those given); a ``UserError`` with close matches if there is none, or
    naming the options it does not take (``check_executor``)."""
    return check_executor(name, options).factory(**(options or {}))
