"""The task graph: tasks, their keys, and the plan that orders them.

A task is a spec (``bench.plan.specs``: what determines its output), the key that hashes it, a label for
humans and ``TaskAbout``: the suite's names of what it concerns (dataset, defense, attack labels...), which
its result rows carry but its key does not hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .specs import TaskSpec, spec_from_payload

if TYPE_CHECKING:
    from ..config import Suite


def task_key(kind: str, config: dict[str, Any], deps: list[str], version: str) -> str:
    """The hash of everything that determines a task's output: its kind, its config (a spec's payload), the keys
    of the tasks it consumes, and ``version``, the version of its kind's step (``TaskSpec.version``)."""
    blob = json.dumps({"kind": kind, "step": version, "config": config, "deps": deps}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TaskAbout:
    """The suite's names of what a task concerns: copied into its result rows, never hashed into its key
    (renaming a label does not re-run anything). ``attack`` is the suite's label of the attack (a check's
    "pgd-linf@unbounded"), ``attack_name`` its registered name; ``source`` "white-box", "transfer:<label>"
    or a check source; ``evaluated_on`` the surface scored."""

    dataset: str = ""
    seed: int = 0
    defense: str | None = None
    detector: str | None = None
    attack: str | None = None
    attack_name: str | None = None
    budget: float | None = None
    surface: str | None = None
    source: str | None = None
    evaluated_on: str | None = None
    method: str | None = None  # a detection method's label (the detector's, or a baseline's)
    train_attacks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Task:
    kind: str                       # a registered task kind (bench.registry.task_steps): train, craft, ...
    key: str
    label: str                      # for humans: progress lines, failure summaries
    config: dict[str, Any]          # the spec's payload: what the key hashes, stored with the task
    deps: list[str]                 # keys of upstream tasks: the spec's ``upstream()``
    about: TaskAbout = field(default_factory=TaskAbout)
    _spec: TaskSpec | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, spec: TaskSpec, label: str, about: TaskAbout) -> Task:
        config, deps = spec.payload(), spec.upstream()
        return cls(spec.kind, task_key(spec.kind, config, deps, spec.version), label, config, deps, about, spec)

    @property
    def spec(self) -> Any:
        """The typed spec (read back from ``config`` for a task made from a stored or hand-written config).
        Typed ``Any`` so a step can read its kind's fields; each step states the spec class it expects."""
        if self._spec is None:
            self._spec = spec_from_payload(self.kind, self.config, self.deps)
        return self._spec

    @property
    def model(self) -> str:
        """The train task whose trained model this task runs on (a train task: itself): what model affinity,
        caching and the batch-size memory key on."""
        if self.kind == "train":
            return self.key
        if self._spec is None and not self.config:  # a bare task (a test's, a plugin's): its first upstream
            return self.deps[0] if self.deps else self.key
        return self.spec.model

    @property
    def info(self) -> dict[str, Any]:
        """``about`` as a dict (every field; None where it does not apply): the shape tests read; the harness
        itself reads ``about``'s typed fields."""
        return self.about.as_dict()


@dataclass
class Plan:
    suite: Suite
    tasks: list[Task]               # topologically ordered: every task after the tasks it depends on

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.tasks]

    def by_kind(self, kind: str) -> list[Task]:
        return [t for t in self.tasks if t.kind == kind]
