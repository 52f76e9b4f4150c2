"""Planning: a validated Suite -> a task graph, in dependency order.

Each track plans in its own module against the typed task specs (``specs``): the defense grid (``grid``:
train, craft, score), the detector protocol (``detectors``), the soundness checks (``soundness``), the certificates
(``certificates``);
``build_plan`` composes them. Each task's key hashes everything that determines its output: its spec's
payload, the keys of the tasks it consumes, and the version of its kind's step (``graph.task_key``).
"""

from __future__ import annotations

from ..config import Suite
from .certificates import plan_certificates
from .detectors import plan_detectors
from .entries import DEFAULT_REPEATS
from .graph import Plan, Task, TaskAbout, task_key
from .grid import TrainedModels, plan_grid
from .soundness import plan_checks

__all__ = ["DEFAULT_REPEATS", "Plan", "Task", "TaskAbout", "build_plan", "task_key"]


def build_plan(suite: Suite) -> Plan:
    train: TrainedModels = {}
    grid = plan_grid(suite, train)
    detection = plan_detectors(suite, train)
    certify = plan_certificates(suite, train)
    # Soundness checks' evidence last: where one's key is a suite task's, the suite's task (and label) is kept.
    extra = plan_checks(suite, train) if suite.checks else []
    unique: dict[str, Task] = {}
    for task in [*train.values(), *grid, *detection, *certify, *extra]:
        unique.setdefault(task.key, task)  # two labels for one config: one task
    return Plan(suite, list(unique.values()))
