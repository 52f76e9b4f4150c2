"""How long a task will take, before it runs: for the scheduler's packing (longest first) and its ETA.

Two sources, best first:

1. stored timings: the wall time of done tasks of the same *signature* (kind, the defense's config without
   its seed, the attack's config without its budget, the surface, the number of examples), from earlier
   runs of the plan (a resumed or edited suite) and from this run as it goes. Two PGD crafts at other
   budgets on another seed of one defense cost the same;
2. a count of work (``task_work``): forward passes of one example (a forward and backward counts 3) ×
   examples, through one model of the task's defense. Training: epochs × training images × 3 × the
   defense's training factor (``training_factor``: FGSM examples, a teacher, extra dustbin images...);
   a craft: attacked images × the attack's passes per image (``attack_passes``: steps × restarts × EOT
   draws × 2 (a forward and a backward to the input), binary-search steps, queries, target classes...);
   a score: scored images × repeats; the soundness checks and detector steps alike. Split sizes left
   unset come from the dataset's registry meta (``sizes``). ``TaskCosts`` counts every model alike
   (ensemble members multiply) and converts at the rate the timed tasks show (seconds per pass, their
   median); the dry run's estimate (``bench.runner.estimate``) weighs each pass by the FLOPs of the model
   it goes through instead;
3. before any task of the plan is timed: the store's mean wall time of the task's kind (other suites),
   else the count of work at ``DEFAULT_SECONDS_PER_PASS``.

Crude by design: it only has to put a 10-minute training before a 1-second score and move the ETA toward
the truth as the run goes. Early stopping is counted at full length (DeepFool, C&W's abort_early: an upper
bound), except AutoAttack's later attacks, counted on half the images (``bench.attacks.autoattack.ROBUST_LEFT``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from ..attacks.base import FORWARD_BACKWARD, INPUT_GRADIENT
from ..plan import Plan, Task
from ..registry import certifiers
from ..plan.specs import (AdaptiveSpec, CertifySpec, CheckNoiseSpec, CleanScoreSpec, CraftedScoreSpec, CraftSpec,
                          DatasetRef, DetectorDataSpec, DetectSpec, EntryRef, EvalSet, ProbeSpec, ScoreSpec, TrainSpec)

DEFAULT_SECONDS_PER_PASS = 2e-5  # one image forward on a small CNN, 2 CPU cores (order of magnitude)
_FALLBACK_IMAGES = 10_000  # a dataset entry without a stated size (the whole split) nor a registered one
TRAINED = "trained"  # ``Work.model`` of a train task: every module the defense trains


@dataclass(frozen=True)
class Work:
    """What one task computes, counted before it runs."""

    passes: float  # forward passes of one example through ``model`` (a forward and backward: 3)
    model: str  # which model of the defense: TRAINED, or a surface name ("deployed", "member:0", "single"...)
    train: Task | None  # the train task of that defense (None: not in the plan)


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

    def stored(self, task: Task) -> float | None:
        """The mean wall time of timed tasks of ``task``'s signature, or None (source 1 only)."""
        same = self.timed.get(self.signature(task))
        return sum(same) / len(same) if same else None

    def seconds(self, task: Task) -> float:
        same = self.stored(task)
        if same is not None:
            return same
        if not self.rates and task.kind in self.kind_means:
            return self.kind_means[task.kind]
        rate = statistics.median(self.rates) if self.rates else DEFAULT_SECONDS_PER_PASS
        return self.passes(task) * rate

    def total(self, tasks: list[Task]) -> float:
        return sum(self.seconds(t) for t in tasks)

    # -- what makes two tasks cost the same
    def signature(self, task: Task) -> tuple:
        train = self._train(task)
        defense = json.dumps(_without(train.config, "seed"), sort_keys=True, default=str) if train else ""
        craft = self._craft(task)
        attack = json.dumps(_without(craft.config, "budget"), sort_keys=True, default=str) if craft else ""
        return task.kind, defense, attack, json.dumps(_without(task.config, "budget", "seed"), sort_keys=True,
                                                      default=str)

    # -- the count of work
    def passes(self, task: Task) -> float:
        """``task_work``'s passes, every model counted alike: a pass through a whole ensemble is one per member."""
        work = self.work(task)
        members = _members(work.train.spec) if work.train and work.model in (TRAINED, "deployed") else 1
        return work.passes * members

    def work(self, task: Task) -> Work:
        return task_work(task, self.by_key)

    def _train(self, task: Task) -> Task | None:
        return _train_of(task, self.by_key)

    def _craft(self, task: Task) -> Task | None:
        return _craft_of(task, self.by_key)


def _train_of(task: Task, by_key: dict[str, Task]) -> Task | None:
    """The train task whose defense ``task`` runs: itself, or the one it runs on (``Task.model``)."""
    if task.kind == "train":
        return task
    model = by_key.get(task.model)
    return model if model is not None and model.kind == "train" else None


def _craft_of(task: Task, by_key: dict[str, Task]) -> Task | None:
    """The craft task whose examples ``task`` reads (itself for a craft), if it is in the plan."""
    if task.kind == "craft":
        return task
    if task.config and isinstance(task.spec, CraftedScoreSpec):
        craft = by_key.get(task.spec.craft)
        return craft if craft is not None and craft.kind == "craft" else None
    return None


def task_work(task: Task, by_key: dict[str, Task]) -> Work:
    """The count of work of ``task`` (a task of the plan whose tasks ``by_key`` holds): see the module docstring."""
    train = _train_of(task, by_key)
    if not task.config:  # a bare task (a test's, a plugin kind's): a pass over a dataset's worth of images
        return Work(float(_FALLBACK_IMAGES), "deployed", train)
    spec = task.spec
    if isinstance(spec, TrainSpec):
        factor = training_factor(spec.defense.name, dict(spec.defense.params))
        epochs = float(spec.defense.params.get("epochs") or 1)
        return Work(epochs * _images(spec.dataset, "train_size") * FORWARD_BACKWARD * factor, TRAINED, train)
    if isinstance(spec, CraftSpec):
        return Work(_attack_work(spec.attack, spec.budget, spec.eval), spec.surface or "deployed", train)
    if isinstance(spec, CraftedScoreSpec) and (craft := _craft_of(task, by_key)) is not None:
        # the crafted images, and the clean ones they came from (shared between scores where deterministic)
        return Work(_eval_images(craft.spec.eval) * spec.repeats * 2, "deployed", train)
    if isinstance(spec, ScoreSpec):  # the clean test split (an out-distribution set counted as the test split)
        dataset = spec.dataset if isinstance(spec, CleanScoreSpec) else train.spec.dataset if train else None
        return Work(_images(dataset, "test_size") * spec.repeats, "deployed", train)
    if isinstance(spec, CheckNoiseSpec):  # draws of noise per image, each scored, and the clean images
        return Work(_eval_images(spec.eval) * (spec.draws + 1) * spec.repeats, "deployed", train)
    if isinstance(spec, ProbeSpec):  # clean passes, and one input gradient
        return Work(_eval_images(spec.eval) * (max(spec.passes, spec.repeats) + INPUT_GRADIENT), "deployed", train)
    if isinstance(spec, DetectorDataSpec):  # the attack at each budget on the detector's images, and their features
        budgets = len(spec.budgets or [None])
        images = EvalSet(spec.dataset, spec.images)
        return Work(_attack_work(spec.attack, None, images) * budgets + spec.images * (budgets + 1), "deployed",
                    train)
    if isinstance(spec, DetectSpec):  # the features of every detector-data set's clean and attacked images
        data = [by_key[k].spec for k in spec.data.values() if k in by_key]
        images = sum(d.images * (len(d.budgets or [None]) + 1) for d in data)
        return Work(float(images or _FALLBACK_IMAGES), "deployed", train)
    if isinstance(spec, AdaptiveSpec):
        return Work(_attack_work(spec.attack, spec.budget, spec.eval), "deployed", train)
    if isinstance(spec, CertifySpec):  # the method's passes per image of the trained network (bounds, noise draws)
        certifier = certifiers.get(spec.method.name).build(**spec.method.params)
        return Work(_eval_images(spec.eval) * certifier.forward_passes(spec.budgets), TRAINED, train)
    return Work(float(_FALLBACK_IMAGES), "deployed", train)  # a kind added later: a pass over the images


def training_factor(name: str, params: dict[str, Any]) -> float:
    """Training passes of defense ``name`` relative to plain training (epochs × images × a forward and backward
    through every module it trains): what its ``fit`` adds, as the defense declares it
    (``Defense.training_factor``). Defenses not registered here: 1."""
    from ..defense import defense_class_flag
    from ..registry import UnknownName, defenses

    try:
        return float(defense_class_flag(defenses.get(name).factory, "training_factor")(params))
    except UnknownName:
        return 1.0


def attack_passes(name: str, params: dict[str, Any], budget: float | None = None,
                  shape: tuple[int, ...] | None = None) -> float:
    """Forward passes per attacked image of attack ``name`` with its (defaulted) ``params``, as its class
    declares them (``Attack.forward_passes``: gradient steps count ``INPUT_GRADIENT``, queries and noise draws
    1). ``budget`` and ``shape`` (C, H, W) matter to JSMA (pixels changed). Attacks not registered here, and
    factories that are no ``Attack``: the base class's generic count (their ``steps`` (or ``max_iter``,
    ``queries``) × restarts × EOT draws × 3, else 10 steps)."""
    from ..attacks.base import Attack
    from ..registry import UnknownName, attacks

    try:
        factory = attacks.get(name).factory
    except UnknownName:  # a plugin not installed here, a broken one, a made-up name
        factory = Attack
    if not (isinstance(factory, type) and issubclass(factory, Attack)):
        factory = Attack
    return factory.forward_passes(params, budget, shape)


def _attack_work(attack: EntryRef, budget: float | None, images: EvalSet) -> float:
    shape = _registered(images.dataset.name).get("shape")
    return _eval_images(images) * attack_passes(attack.name, dict(attack.params), budget, shape)


def _eval_images(images: EvalSet) -> float:
    """The images a task attacks or scores: its ``eval_size``, else its dataset's test split."""
    return float(images.eval_size) if images.eval_size else _images(images.dataset, "test_size")


def _members(train: TrainSpec) -> int:
    params = train.defense.params
    members = params.get("members") or params.get("num_members") or 1
    return int(members) if isinstance(members, int) else len(members) if isinstance(members, list) else 1


def _registered(name: str) -> dict[str, Any]:
    """Dataset ``name``'s registry meta, or {} (not registered: a test's made-up task)."""
    from ..registry import datasets

    try:
        return datasets.get(name).meta
    except Exception:  # an unknown name (UnknownName)
        return {}


def _images(dataset: DatasetRef | None, size_key: str) -> float:
    """A dataset entry's ``train_size``/``test_size``, else its split's size from the registry's ``sizes``."""
    if dataset is None:
        return float(_FALLBACK_IMAGES)
    size = dataset.train_size if size_key == "train_size" else dataset.test_size
    if size:
        return float(size)
    sizes = _registered(dataset.name).get("sizes")
    if sizes is not None:
        try:
            return float(sizes(dict(dataset.params))[0 if size_key == "train_size" else 1])
        except (ValueError, KeyError, TypeError):
            pass
    return float(_FALLBACK_IMAGES)
