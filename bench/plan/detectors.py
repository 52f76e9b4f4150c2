"""The detector track's tasks (Monteiro et al. 2019): per dataset, seed and detector, train its models (a
train task like a defense's), build detector data per attack, evaluate the detector and each baseline on that
data, and run the detector-aware attacks (and, with ``checks``, their soundness checks)."""

from __future__ import annotations

from dataclasses import replace

from ..config import Suite
from ..registry import attacks
from .entries import attack_budget_label, attack_ref, dataset_ref, defense_ref
from .grid import TrainedModels
from .graph import Task, TaskAbout
from .soundness import plan_detector_checks
from .specs import AdaptiveSpec, DetectorDataSpec, DetectSpec, EntryRef, EvalSet, ThresholdRule, TrainSpec


def plan_detectors(suite: Suite, train: TrainedModels) -> list[Task]:
    """The detector data, detect and adaptive tasks; each detector's train task goes into ``train`` under
    ``detector:<label>``."""
    data_tasks: dict[str, Task] = {}
    later: list[Task] = []
    by_label = {a.label: a for a in suite.detector_attacks}
    for ds in suite.datasets:
        dataset = dataset_ref(ds)
        for seed in suite.seeds:
            where = f"({ds.label}, seed {seed})"
            for d in suite.detectors:
                about = TaskAbout(ds.label, seed, detector=d.label)
                model = train[(ds.label, f"detector:{d.label}", seed)] = Task.of(
                    TrainSpec(dataset, defense_ref(d), seed), f"train detector {d.label} on {ds.label} (seed {seed})",
                    replace(about, defense=d.label))
                train_attacks = d.train_attacks or list(by_label)
                test_attacks = d.test_attacks or train_attacks
                data_keys: dict[str, str] = {}
                for label in dict.fromkeys([*train_attacks, *test_attacks]):
                    a = by_label[label]
                    data = Task.of(DetectorDataSpec(model.key, dataset, attack_ref(a), a.budgets, d.images, seed),
                                   f"detector data: {label} on {d.label} {where}", replace(about, attack=label))
                    data_keys[label] = data.key
                    data_tasks.setdefault(data.key, data)
                methods = [(d.label, None), *((b.label, EntryRef(b.name, b.params)) for b in d.baselines)]
                for method_label, method in methods:
                    later.append(Task.of(
                        DetectSpec(model.key, d.label, method, method_label, d.folds, d.fpr, seed, train_attacks,
                                   test_attacks, data_keys),
                        f"evaluate {method_label} on {d.label}'s data {where}", replace(about, method=method_label)))
                fit_data = tuple(dict.fromkeys(data_keys[a] for a in train_attacks))
                threshold = ThresholdRule(d.fpr if d.adaptive_threshold == "fpr" else None)
                guarded = replace(about, train_attacks=tuple(train_attacks))
                for a in d.adaptive_attacks:
                    weights = a.detector_weights if attacks.get(a.name).factory.ascends_attack_loss else []
                    for budget in a.budgets:
                        later.append(Task.of(
                            AdaptiveSpec(model.key, fit_data, d.label, a.label, attack_ref(a), budget,
                                         EvalSet(dataset, ds.eval_size), seed, d.images, weights, threshold),
                            f"detector-aware {a.label} {attack_budget_label(a, budget)} on {d.label} {where}",
                            replace(guarded, attack=a.label)))
                if suite.checks:
                    later += plan_detector_checks(suite, ds, d, model.key, fit_data, guarded, seed)
    return [*data_tasks.values(), *later]
