"""A suite's entries as the specs name them: registry versions filled in, defaults resolved.

Every track's planning (``grid``, ``soundness``, ``detectors``) builds its specs' parts here, so a rule about
what enters a key (a resolved default, a pinned file, an option absent at its default) is stated once.
"""

from __future__ import annotations

from typing import Any

from ..config import AttackEntry, DatasetEntry, DefenseEntry, Suite
from ..defense import defense_class_flag
from ..labels import budget_label
from ..registry import attacks, datasets, defenses
from .specs import DatasetRef, EntryRef, EvalSet, OutDistributionRef

# Predictions per scored example of a stochastic defense when the suite does not say (issue: a single
# draw is never the reported number for one).
DEFAULT_REPEATS = 10


def dataset_ref(ds: DatasetEntry) -> DatasetRef:
    # ``verify: false`` (files not checked against torchvision's checksums: maybe other data) enters the
    # payload, and so the keys and the rows' provenance; the default stays out, so existing keys hold.
    return DatasetRef(ds.name, datasets.get(ds.name).version, ds.params, ds.train_size, ds.test_size,
                      ds.subset_seed, ds.verify)


def out_distribution_ref(ds: DatasetEntry) -> OutDistributionRef:
    out = ds.out_distribution
    return OutDistributionRef(out.name, datasets.get(out.name).version, out.params, out.exclude_classes,
                              out.test_size, out.subset_seed)


def defense_ref(d: DefenseEntry) -> EntryRef:
    entry = defenses.get(d.name)
    # A defense whose output depends on a file its parameters name (``pretrained``'s weights) pins the file's
    # content in (its ``resolve_params``: the SHA-256), so a changed file changes the keys.
    return EntryRef(d.name, defense_class_flag(entry.factory, "resolve_params")(d.params), entry.version)


def is_stochastic(defense_name: str) -> bool:
    """Whether a registered defense draws randomness at test time (``Defense.stochastic``)."""
    return bool(defense_class_flag(defenses.get(defense_name).factory, "stochastic"))


def gradient_surface(d: DefenseEntry) -> str:
    """The surface whose input gradients check 7 probes for defense ``d`` (``Defense.gradient_surface``)."""
    return str(defense_class_flag(defenses.get(d.name).factory, "gradient_surface"))


def attack_ref(a: AttackEntry, defense: DefenseEntry | None = None) -> EntryRef:
    entry = attacks.get(a.name)
    params = dict(a.params)
    resolve = getattr(entry.factory, "params_for_defense", None)
    if resolve is not None and defense is not None:  # per attacked defense (autoattack's version: auto -> rand)
        params = resolve(params, stochastic=is_stochastic(defense.name))
    if "backend" in params and params["backend"] is None:  # resolve the default: it changes the output
        params["backend"] = entry.build(**a.params).backend  # the class's first, or what eot needs
    if params.get("eot") == 1:
        del params["eot"]  # absent without EOT, so the keys of ordinary cells do not depend on the option
    return EntryRef(a.name, params, entry.version)


def repeats(suite: Suite, d: DefenseEntry) -> int:
    """Predictions per scored example of defense ``d``: 1 for a deterministic defense (one prediction is the
    prediction), the suite's ``repeats`` (else ``DEFAULT_REPEATS``) for a stochastic one."""
    return (suite.repeats or DEFAULT_REPEATS) if is_stochastic(d.name) else 1


def attack_eval(ds: DatasetEntry, a: Any, correct_by: str | None) -> EvalSet:
    """The examples an attack entry attacks: the dataset's, or the first ``eval_size`` of them; with the
    dataset's ``eval_correct_by``, only those that defense's trained model (``correct_by``: its train task's
    key) classifies correctly."""
    size = ds.eval_size if a.eval_size is None else min(a.eval_size, ds.eval_size)
    return EvalSet(dataset_ref(ds), size, correct_by)


def attack_budget_label(attack: Any, budget: float | None) -> str:
    return budget_label(attacks.get(attack.name).factory.budget_param, budget, symbol=False)


def on_surface(defense: str, surface: str) -> str:
    """How a label names a defense's surface: ``rse`` (deployed) or ``rse.single``."""
    return defense if surface == "deployed" else f"{defense}.{surface}"
