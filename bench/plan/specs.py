"""The plan↔runner contract: one frozen dataclass per task kind.

A spec says everything that determines a task's output. ``payload()`` is what its key hashes (and what the
store records as the task's config); it owns the rule that keeps keys stable as options are added: a field
at its default is *absent* from the payload, so the keys of suites that never set it do not move.
``upstream()`` is the keys of the tasks it consumes, in the order the key hashes them; every upstream task
has a field of its own (``model``, ``craft``, ``correct_by``...) instead of a position in a list.

``spec_from_payload`` reads a spec back from a stored config (the store's ``tasks`` table, a test's
hand-made task); it and the ``payload`` methods are the only code that reads a config by string key.
A task step receives its task's spec, typed (``Task.spec``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

Params = Mapping[str, Any]  # a registry entry's validated parameters: the entry's own typed concern
DEPLOYED = "deployed"  # the surface a defense is deployed as (``Defense.surface``)


def _omit_default(name: str, value: Any, default: Any) -> dict[str, Any]:
    """``{name: value}``, or nothing when ``value`` is the default: how a new option keeps old keys."""
    return {} if value == default else {name: value}


# --------------------------------------------------------------------------- what tasks name


@dataclass(frozen=True)
class DatasetRef:
    """A dataset entry as the tasks that load it see it: registered name and version, parameters, subsets."""

    name: str
    version: str
    params: Params
    train_size: int | None
    test_size: int | None
    subset_seed: int
    verify: bool = True  # false: files not checked against torchvision's checksums (maybe other data)

    def payload(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": self.params, "train_size": self.train_size,
                "test_size": self.test_size, "subset_seed": self.subset_seed,
                **_omit_default("verify", self.verify, True)}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> DatasetRef:
        return cls(p["name"], p["version"], p["params"], p.get("train_size"), p.get("test_size"),
                   p.get("subset_seed", 0), p.get("verify", True))


@dataclass(frozen=True)
class OutDistributionRef:
    """A dataset entry's ``out_distribution``: images no class is right for (Abbasi et al. Table I)."""

    name: str
    version: str
    params: Params
    exclude_classes: list[str] | None
    test_size: int | None
    subset_seed: int

    def payload(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": self.params,
                "exclude_classes": self.exclude_classes, "test_size": self.test_size, "subset_seed": self.subset_seed}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> OutDistributionRef:
        return cls(p["name"], p["version"], p["params"], p.get("exclude_classes"), p.get("test_size"),
                   p.get("subset_seed", 0))


@dataclass(frozen=True)
class EntryRef:
    """A registry entry with its resolved parameters: a defense, an attack, a baseline detector. ``version``
    None: not a registered entry (a noise baseline of the detector checks), and absent from the payload."""

    name: str
    params: Params
    version: str | None = None

    def payload(self) -> dict[str, Any]:
        return {"name": self.name, **({} if self.version is None else {"version": self.version}),
                "params": self.params}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> EntryRef:
        return cls(p["name"], p.get("params", {}), p.get("version"))


@dataclass(frozen=True)
class EvalSet:
    """The test images an attack gets: the dataset's seeded order, its first ``eval_size``; with
    ``correct_by`` (a train task's key, an upstream task), only those that trained model classifies right."""

    dataset: DatasetRef
    eval_size: int
    correct_by: str | None = None

    def payload(self) -> dict[str, Any]:
        return {"dataset": self.dataset.payload(), "eval_size": self.eval_size,
                **_omit_default("correct_by", self.correct_by, None)}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> EvalSet:
        return cls(DatasetRef.from_payload(p["dataset"]), p["eval_size"], p.get("correct_by"))


@dataclass(frozen=True)
class ThresholdRule:
    """The guarded classifier's operating point: the detector's own decision (``fpr`` None), or the score
    that flags a fraction ``fpr`` of clean held-out images."""

    fpr: float | None = None

    def payload(self) -> dict[str, Any]:
        return {"rule": "classifier"} if self.fpr is None else {"rule": "fpr", "fpr": self.fpr}

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> ThresholdRule:
        return cls(p.get("fpr") if p.get("rule") == "fpr" else None)


def _with_referee(model: str, correct_by: str | None) -> list[str]:
    """The model a task runs on, then the one that picks its images (when another)."""
    return list(dict.fromkeys([model, *([correct_by] if correct_by else [])]))


# --------------------------------------------------------------------------- the task kinds


@dataclass(frozen=True)
class TaskSpec:
    """What every kind declares: its ``kind`` (a ``bench.registry.task_steps`` name) and the ``version`` of its
    step (part of its keys: bump it when the harness's own part of the step changes its output)."""

    kind: ClassVar[str]
    version: ClassVar[str] = "1"

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def upstream(self) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class TrainSpec(TaskSpec):
    """Train a defense (or a detector's models) on a dataset with a seed; ``references``: the train tasks of
    other defenses it reads (``Defense.defense_references``: parameter -> key)."""

    kind: ClassVar[str] = "train"
    dataset: DatasetRef
    defense: EntryRef
    seed: int
    references: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"dataset": self.dataset.payload(), "defense": self.defense.payload(), "seed": self.seed,
                **_omit_default("references", dict(self.references), {})}

    def upstream(self) -> list[str]:
        return list(self.references.values())


@dataclass(frozen=True)
class CraftSpec(TaskSpec):
    """Adversarial examples of one attack at one budget on a trained model's ``surface``."""

    kind: ClassVar[str] = "craft"
    model: str  # the train task of the model attacked (the transfer source, for a transfer attack)
    attack: EntryRef
    budget: float | None
    surface: str
    eval: EvalSet
    seed: int

    def payload(self) -> dict[str, Any]:
        return {"attack": self.attack.payload(), "budget": self.budget, "surface": self.surface,
                "eval": self.eval.payload(), "seed": self.seed}

    def upstream(self) -> list[str]:
        return _with_referee(self.model, self.eval.correct_by)


@dataclass(frozen=True)
class ScoreSpec(TaskSpec):
    """One result row of a trained model: the three kinds of examples it is scored on are subclasses.
    ``repeats``: predictions per example of a stochastic defense (1: absent)."""

    kind: ClassVar[str] = "score"
    examples: ClassVar[str]
    model: str  # the train task of the scored defense
    repeats: int

    def _repeats(self) -> dict[str, Any]:
        return _omit_default("repeats", self.repeats, 1)


@dataclass(frozen=True)
class CleanScoreSpec(ScoreSpec):
    """Clean accuracy on the whole test split, on the deployed model or another surface."""

    examples: ClassVar[str] = "test split"
    dataset: DatasetRef
    seed: int
    evaluated_on: str = DEPLOYED

    def payload(self) -> dict[str, Any]:
        return {"examples": self.examples, "dataset": self.dataset.payload(), "seed": self.seed,
                **_omit_default("evaluate_on", self.evaluated_on, DEPLOYED), **self._repeats()}

    def upstream(self) -> list[str]:
        return [self.model]


@dataclass(frozen=True)
class OutDistributionScoreSpec(ScoreSpec):
    """Rejection of out-distribution images, which no class is right for."""

    examples: ClassVar[str] = "out-distribution"
    evaluated_on: ClassVar[str] = DEPLOYED  # a reject option is the deployed model's
    out_distribution: OutDistributionRef
    seed: int

    def payload(self) -> dict[str, Any]:
        return {"examples": self.examples, "out_distribution": self.out_distribution.payload(), "seed": self.seed,
                **self._repeats()}

    def upstream(self) -> list[str]:
        return [self.model]


@dataclass(frozen=True)
class CraftedScoreSpec(ScoreSpec):
    """A defense (or one surface) on the examples of a ``craft`` task."""

    examples: ClassVar[str] = "crafted"
    craft: str  # the craft task's key
    evaluated_on: str = DEPLOYED

    def payload(self) -> dict[str, Any]:
        return {"examples": self.examples, **_omit_default("evaluate_on", self.evaluated_on, DEPLOYED),
                **self._repeats()}

    def upstream(self) -> list[str]:
        return [self.model, self.craft]


@dataclass(frozen=True)
class CheckNoiseSpec(TaskSpec):
    """Check 6's evidence (``bench.checks``): random noise of the budget's norm, crafted and scored in one."""

    kind: ClassVar[str] = "check-noise"
    model: str
    noise: str  # a noise baseline of bench/attacks/noise.py
    draws: int
    budget: float
    eval: EvalSet
    seed: int
    repeats: int = 1

    def payload(self) -> dict[str, Any]:
        return {"noise": self.noise, "draws": self.draws, "budget": self.budget, "eval": self.eval.payload(),
                "seed": self.seed, **_omit_default("repeats", self.repeats, 1)}

    def upstream(self) -> list[str]:
        return _with_referee(self.model, self.eval.correct_by)


@dataclass(frozen=True)
class ProbeSpec(TaskSpec):
    """Checks 1 and 7's evidence: clean passes and input gradients of a trained defense (the gradients of its
    ``gradient_surface``: ``Defense.gradient_surface``)."""

    kind: ClassVar[str] = "probe"
    model: str
    eval: EvalSet
    passes: int
    vanishing_below: float
    seed: int
    repeats: int = 1
    gradient_surface: str = DEPLOYED

    def payload(self) -> dict[str, Any]:
        return {"eval": self.eval.payload(), "passes": self.passes, "vanishing_below": self.vanishing_below,
                "seed": self.seed, **_omit_default("repeats", self.repeats, 1),
                **_omit_default("gradient_surface", self.gradient_surface, DEPLOYED)}

    def upstream(self) -> list[str]:
        return _with_referee(self.model, self.eval.correct_by)


@dataclass(frozen=True)
class DetectorDataSpec(TaskSpec):
    """One attack's detector data on a trained detector's models (Monteiro et al. Sec. III-A)."""

    kind: ClassVar[str] = "detector-data"
    version: ClassVar[str] = "2"
    model: str  # the detector's train task
    dataset: DatasetRef
    attack: EntryRef
    budgets: list[float]
    images: int
    seed: int

    def payload(self) -> dict[str, Any]:
        return {"dataset": self.dataset.payload(), "attack": self.attack.payload(), "budgets": self.budgets,
                "images": self.images, "seed": self.seed}

    def upstream(self) -> list[str]:
        return [self.model]


@dataclass(frozen=True)
class DetectSpec(TaskSpec):
    """Cross-validation and the cross-attack matrix of one detection method (the detector, or a baseline:
    ``method``) on the detector data of its attacks (``data``: attack label -> detector-data key)."""

    kind: ClassVar[str] = "detect"
    version: ClassVar[str] = "2"
    model: str
    detector: str  # the detector entry's label
    method: EntryRef | None  # None: the detector itself
    method_label: str
    folds: int
    fpr: float
    seed: int
    train_attacks: list[str]
    test_attacks: list[str]
    data: Mapping[str, str]

    def payload(self) -> dict[str, Any]:
        # The labels are in the payload: two entries that differ only in their label each get their own rows.
        return {"detector": self.detector, "method": None if self.method is None else self.method.payload(),
                "method_label": self.method_label, "folds": self.folds, "fpr": self.fpr, "seed": self.seed,
                "train_attacks": self.train_attacks, "test_attacks": self.test_attacks, "data": dict(self.data)}

    def upstream(self) -> list[str]:
        return [self.model, *dict.fromkeys(self.data.values())]


@dataclass(frozen=True)
class AdaptiveSpec(TaskSpec):
    """A detector-aware attack on the guarded classifier, beside the same attack on the model alone; with
    ``check``, one soundness check's evidence for the guarded classifier (the detector-aware run alone). The
    detector is fitted on the detector data of ``fit_data`` (its train attacks' detector-data keys)."""

    kind: ClassVar[str] = "adaptive"
    version: ClassVar[str] = "4"
    model: str
    fit_data: tuple[str, ...]
    detector: str
    attack_label: str
    attack: EntryRef
    budget: float
    eval: EvalSet
    seed: int
    detector_images: int
    detector_weights: list[float]
    threshold: ThresholdRule
    check: str | None = None  # a check source (``bench.checks``: "check:unbounded"...)

    def payload(self) -> dict[str, Any]:
        return {"detector": self.detector, "attack_label": self.attack_label, "attack": self.attack.payload(),
                "budget": self.budget, "eval": self.eval.payload(), "seed": self.seed,
                "detector_images": self.detector_images, "detector_weights": self.detector_weights,
                "threshold": self.threshold.payload(), **_omit_default("check", self.check, None)}

    def upstream(self) -> list[str]:
        return [self.model, *dict.fromkeys(self.fit_data)]


@dataclass(frozen=True)
class CertifySpec(TaskSpec):
    """Certified lower bounds of one method (a ``bench.registry.certifiers`` entry) on a trained defense's
    deployed model, per example, at every budget of one threat model: one row per budget."""

    kind: ClassVar[str] = "certify"
    model: str
    method: EntryRef
    threat_model: str
    budgets: tuple[float, ...]
    eval: EvalSet
    seed: int

    def payload(self) -> dict[str, Any]:
        return {"method": self.method.payload(), "threat_model": self.threat_model, "budgets": list(self.budgets),
                "eval": self.eval.payload(), "seed": self.seed}

    def upstream(self) -> list[str]:
        return _with_referee(self.model, self.eval.correct_by)


# --------------------------------------------------------------------------- reading a stored config back


def spec_from_payload(kind: str, p: Mapping[str, Any], deps: list[str]) -> TaskSpec:
    """The spec whose ``payload()`` is ``p`` and whose ``upstream()`` is ``deps``: a stored task's config read
    back (the upstream keys that are not in the payload come from ``deps``, by their role)."""
    model = deps[0] if deps else ""
    if kind == "train":
        return TrainSpec(DatasetRef.from_payload(p["dataset"]), EntryRef.from_payload(p["defense"]), p["seed"],
                         p.get("references", {}))
    if kind == "craft":
        return CraftSpec(model, EntryRef.from_payload(p["attack"]), p.get("budget"), p.get("surface", DEPLOYED),
                         EvalSet.from_payload(p["eval"]), p.get("seed", 0))
    if kind == "score":
        repeats = p.get("repeats", 1)
        if p.get("examples") == OutDistributionScoreSpec.examples:
            return OutDistributionScoreSpec(model, repeats, OutDistributionRef.from_payload(p["out_distribution"]),
                                            p["seed"])
        if p.get("examples") == CleanScoreSpec.examples:
            return CleanScoreSpec(model, repeats, DatasetRef.from_payload(p["dataset"]), p["seed"],
                                  p.get("evaluate_on", DEPLOYED))
        return CraftedScoreSpec(model, repeats, deps[1], p.get("evaluate_on", DEPLOYED))
    if kind == "check-noise":
        return CheckNoiseSpec(model, p["noise"], p["draws"], p["budget"], EvalSet.from_payload(p["eval"]), p["seed"],
                              p.get("repeats", 1))
    if kind == "probe":
        return ProbeSpec(model, EvalSet.from_payload(p["eval"]), p["passes"], p["vanishing_below"], p["seed"],
                         p.get("repeats", 1), p.get("gradient_surface", DEPLOYED))
    if kind == "detector-data":
        return DetectorDataSpec(model, DatasetRef.from_payload(p["dataset"]), EntryRef.from_payload(p["attack"]),
                                p["budgets"], p["images"], p["seed"])
    if kind == "detect":
        method = None if p.get("method") is None else EntryRef.from_payload(p["method"])
        return DetectSpec(model, p["detector"], method, p["method_label"], p["folds"], p["fpr"], p["seed"],
                          p["train_attacks"], p["test_attacks"], p["data"])
    if kind == "adaptive":
        return AdaptiveSpec(model, tuple(deps[1:]), p["detector"], p["attack_label"],
                            EntryRef.from_payload(p["attack"]),
                            p["budget"], EvalSet.from_payload(p["eval"]), p["seed"], p["detector_images"],
                            p["detector_weights"], ThresholdRule.from_payload(p["threshold"]), p.get("check"))
    if kind == "certify":
        return CertifySpec(model, EntryRef.from_payload(p["method"]), p["threat_model"], tuple(p["budgets"]),
                           EvalSet.from_payload(p["eval"]), p["seed"])
    raise KeyError(f"no spec for task kind {kind!r}")
