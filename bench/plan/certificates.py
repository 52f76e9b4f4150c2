"""The certificates track: per dataset, seed and ``certificates:`` entry, one certify task per defense the
method applies to, over the attacked images, at every budget of its threat model.

Each certify task names the images the suite's attacks get (``attack_eval``), so its per-example certified flags
line up with the attacks' (check 8 and the [certified, best known] interval, bench.report.certified). Its
budgets default to the eps budgets the suite's attacks on that defense run at in the threat model: each
certified number sits beside a best-known one.
"""

from __future__ import annotations

from typing import Any

from ..config import CertificateEntry, DefenseEntry, Suite
from ..registry import attacks, certifiers, defenses
from .entries import attack_eval
from .graph import Task, TaskAbout
from .grid import TrainedModels, correct_by
from .specs import CertifySpec, EntryRef


def certified_defenses(c: CertificateEntry, suite: Suite) -> list[DefenseEntry]:
    """The defenses an entry certifies: those it names, else every defense of the suite its method applies to."""
    if c.defenses is not None:
        return [d for d in suite.defenses if d.label in c.defenses]
    certifier = certifiers.get(c.name).build(**c.params)
    return [d for d in suite.defenses if certifier.applies_to(defenses.get(d.name).factory) is None]


def threat_model_of(c: CertificateEntry) -> str:
    method: Any = certifiers.get(c.name).factory
    return c.threat_model or method.threat_models[0]


def attack_budgets(suite: Suite, defense: str, threat_model: str) -> list[float]:
    """The eps budgets the suite's attacks on ``defense`` run at in ``threat_model``, ascending."""
    found: set[float] = set()
    for a in suite.attacks:
        cls: Any = attacks.get(a.name).factory
        if (a.defenses is None or defense in a.defenses) and str(cls.threat_model) == threat_model \
                and cls.budget_param == "eps":
            found.update(float(b) for b in a.budgets if b is not None)
    return sorted(found)


def plan_certificates(suite: Suite, train: TrainedModels) -> list[Task]:
    tasks = []
    for c in suite.certificates:
        method = EntryRef(c.name, c.params, certifiers.get(c.name).version)
        tm = threat_model_of(c)
        targets = certified_defenses(c, suite)
        for ds in suite.datasets:
            dataset = ds.label or ds.name  # labels: set by validation
            for seed in suite.seeds:
                referee = correct_by(ds, train, seed)
                for d in targets:
                    defense = d.label or d.name
                    budgets = sorted(float(b) for b in c.budgets) if c.budgets else attack_budgets(suite, defense, tm)
                    if not budgets:
                        continue  # nothing to sit beside: no attack on it in this threat model
                    tasks.append(Task.of(
                        CertifySpec(train[(dataset, defense, seed)].key, method, tm, tuple(budgets),
                                    attack_eval(ds, c, referee), seed),
                        f"certify {defense} by {c.label} ({tm}) on {dataset} (seed {seed})",
                        TaskAbout(dataset, seed, defense=defense, attack=c.label)))
    return tasks
