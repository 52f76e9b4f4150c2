"""How long a task will take, before it runs: for the scheduler's packing (longest first) and its ETA.

Two sources, best first:

1. stored timings: the wall time of done tasks of the same *signature* (kind, the defense's config without
   its seed, the attack's config without its budget, the surface, the number of examples), from earlier
   runs of the plan (a resumed or edited suite) and from this run as it goes. Two PGD crafts at other
   budgets on another seed of one defense cost the same;
2. a count of work: forward-and-backward passes × examples (training: epochs × training images × 3; a
   craft: attacked images × steps × restarts × EOT draws × 3; a score: scored images × repeats), times
   ensemble members, converted to seconds at the rate the timed tasks show (seconds per pass, their
   median);
3. before any task of the plan is timed: the store's mean wall time of the task's kind (other suites),
   else the count of work at ``DEFAULT_SECONDS_PER_PASS``.

Crude by design: it only has to put a 10-minute training before a 1-second score and move the ETA toward
the truth as the run goes.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from ..plan import Plan, Task

DEFAULT_SECONDS_PER_PASS = 2e-5  # one image forward on a small CNN, 2 CPU cores (order of magnitude)
_FALLBACK_IMAGES = 10_000  # a dataset entry without a stated size (the whole split)


def _without(config: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in keys}


class TaskCosts:
    """Seconds per task of ``plan``; ``record`` what a finished task took to sharpen the rest."""

    def __init__(self, plan: Plan, stored_wall_times: dict[str, float] | None = None,
                 kind_means: dict[str, float] | None = None):
        self.by_key = {t.key: t for t in plan.tasks}
        self.kind_means = dict(kind_means or {})
        self.timed: dict[tuple, list[float]] = {}
        self.rates: list[float] = []
        for key, seconds in (stored_wall_times or {}).items():
            if key in self.by_key and seconds:
                self.record(self.by_key[key], seconds)

    def record(self, task: Task, seconds: float) -> None:
        self.timed.setdefault(self.signature(task), []).append(seconds)
        passes = self.passes(task)
        if passes > 0:
            self.rates.append(seconds / passes)

    def seconds(self, task: Task) -> float:
        same = self.timed.get(self.signature(task))
        if same:
            return sum(same) / len(same)
        if not self.rates and task.kind in self.kind_means:
            return self.kind_means[task.kind]
        rate = statistics.median(self.rates) if self.rates else DEFAULT_SECONDS_PER_PASS
        return self.passes(task) * rate

    def total(self, tasks: list[Task]) -> float:
        return sum(self.seconds(t) for t in tasks)

    # -- what makes two tasks cost the same
    def signature(self, task: Task) -> tuple:
        cfg = task.config
        train = self._train(task)
        defense = json.dumps(_without(train.config, "seed"), sort_keys=True, default=str) if train else ""
        craft = self._craft(task)
        attack = json.dumps(_without(craft.config, "budget"), sort_keys=True, default=str) if craft else ""
        return task.kind, defense, attack, json.dumps(_without(cfg, "budget", "seed"), sort_keys=True, default=str)

    # -- the count of work
    def passes(self, task: Task) -> float:
        train = self._train(task)
        members = _members(train.config) if train else 1
        cfg = task.config
        if task.kind == "train":
            params = cfg.get("defense", {}).get("params", {})
            return float(params.get("epochs") or 1) * _images(cfg.get("dataset", {}), "train_size") * 3 * members
        craft = self._craft(task)
        if task.kind == "craft":
            return _attack_passes(cfg) * members
        if task.kind == "score":
            if craft is not None:
                n = craft.config.get("eval", {}).get("eval_size") or _FALLBACK_IMAGES
            else:
                n = _images(cfg.get("dataset", train.config.get("dataset", {}) if train else {}), "test_size")
            return float(n) * float(cfg.get("repeats", 1)) * members * 2  # clean and attacked passes
        # other kinds (detector data, probes, noise checks): an attack's worth if they name one, else a pass
        if "attack" in cfg:
            return _attack_passes(cfg) * members
        return float(cfg.get("eval_size") or cfg.get("images") or _FALLBACK_IMAGES) * members

    def _train(self, task: Task) -> Task | None:
        if task.kind == "train":
            return task
        first = self.by_key.get(task.deps[0]) if task.deps else None
        return first if first is not None and first.kind == "train" else None

    def _craft(self, task: Task) -> Task | None:
        if task.kind == "craft":
            return task
        for dep in task.deps[1:]:
            upstream = self.by_key.get(dep)
            if upstream is not None and upstream.kind == "craft":
                return upstream
        return None


def _members(train_config: dict[str, Any]) -> int:
    params = train_config.get("defense", {}).get("params", {})
    members = params.get("members") or params.get("num_members") or 1
    return int(members) if isinstance(members, int) else len(members) if isinstance(members, list) else 1


def _images(dataset: dict[str, Any], size_key: str) -> float:
    return float(dataset.get(size_key) or _FALLBACK_IMAGES)


def _attack_passes(cfg: dict[str, Any]) -> float:
    params = cfg.get("attack", {}).get("params", {})
    steps = params.get("steps") or params.get("max_iter") or params.get("n_queries") or 10
    restarts = params.get("restarts") or params.get("n_restarts") or 1
    eot = params.get("eot") or 1
    images = cfg.get("eval", {}).get("eval_size") or cfg.get("images") or _FALLBACK_IMAGES
    return float(images) * float(steps) * float(restarts) * float(eot) * 3
