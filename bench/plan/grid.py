"""The defense grid: datasets × seeds × defenses × attacks × budgets as train, craft and score tasks.

Work that cells share is planned once: a defense is trained once per dataset and seed, and examples
crafted on a transfer source are scored on every defense. ``TrainedModels`` is what the other tracks
(the checks, the detectors) read: the train task of each (dataset, defense, seed).
"""

from __future__ import annotations

from ..config import DatasetEntry, Suite, defense_references
from ..metrics import OUT_DISTRIBUTION_ATTACK
from .entries import (attack_budget_label, attack_eval, attack_ref, dataset_ref, defense_ref, on_surface,
                      out_distribution_ref, repeats)
from .graph import Task, TaskAbout
from .specs import CleanScoreSpec, CraftedScoreSpec, CraftSpec, OutDistributionScoreSpec, TrainSpec

TrainedModels = dict[tuple[str, str, int], Task]  # (dataset label, defense label, seed) -> its train task


def correct_by(ds: DatasetEntry, train: TrainedModels, seed: int) -> str | None:
    """The train task whose model picks the attacked images (the dataset's ``eval_correct_by``), or None."""
    return train[(ds.label, ds.eval_correct_by, seed)].key if ds.eval_correct_by else None


def _scoring_surfaces(suite: Suite, defense: str) -> list[str]:
    """Surfaces a defense's clean accuracy is needed on: deployed, plus any an attack scores on."""
    surfaces = ["deployed"]
    for a in suite.attacks:
        if a.defenses is None or defense in a.defenses:
            surfaces += [s for s in a.evaluate_on if s not in surfaces]
    return surfaces


def plan_grid(suite: Suite, train: TrainedModels) -> list[Task]:
    """The grid's craft and score tasks, in dependency order; its train tasks go into ``train`` (which the other
    tracks read and ``build_plan`` puts first)."""
    craft: dict[str, Task] = {}
    score: dict[str, Task] = {}
    defense_by_label = {d.label: d for d in suite.defenses}
    for ds in suite.datasets:
        dataset = dataset_ref(ds)
        for seed in suite.seeds:
            where = f"({ds.label}, seed {seed})"
            # A defense that reads another's trained model (Defense.defense_references) after the others.
            for d in sorted(suite.defenses, key=lambda d: bool(defense_references(d))):
                references = {param: train[(ds.label, label, seed)].key
                              for param, label in defense_references(d).items()}
                trained = train[(ds.label, d.label, seed)] = Task.of(
                    TrainSpec(dataset, defense_ref(d), seed, references),
                    f"train {d.label} on {ds.label} (seed {seed})",
                    TaskAbout(ds.label, seed, defense=d.label))
                for surface in _scoring_surfaces(suite, d.label):
                    clean = Task.of(CleanScoreSpec(trained.key, repeats(suite, d), dataset, seed, surface),
                                    f"score {on_surface(d.label, surface)} on clean {ds.label} (seed {seed})",
                                    TaskAbout(ds.label, seed, defense=d.label, evaluated_on=surface))
                    score[clean.key] = clean
                if ds.out_distribution is not None:  # rejection of out-distribution images (Abbasi et al. Table I)
                    out = Task.of(
                        OutDistributionScoreSpec(trained.key, repeats(suite, d), out_distribution_ref(ds), seed),
                        f"score {d.label} on out-distribution {ds.out_distribution.name} "
                        f"({ds.label}, seed {seed})",
                        TaskAbout(ds.label, seed, defense=d.label, attack=OUT_DISTRIBUTION_ATTACK,
                                  evaluated_on="deployed"))
                    score[out.key] = out

            referee = correct_by(ds, train, seed)
            for a in suite.attacks:
                targets = a.defenses or [d.label for d in suite.defenses]
                for budget in a.budgets:
                    for target in targets:
                        source = a.transfer_from or target
                        crafted = Task.of(
                            CraftSpec(train[(ds.label, source, seed)].key, attack_ref(a, defense_by_label[source]),
                                      budget, a.surface, attack_eval(ds, a, referee), seed),
                            f"craft {a.label} {attack_budget_label(a, budget)} on {source}.{a.surface} {where}",
                            TaskAbout(ds.label, seed, defense=source, attack=a.label))
                        craft.setdefault(crafted.key, crafted)
                        for scored_on in a.evaluate_on:
                            scored = Task.of(
                                CraftedScoreSpec(train[(ds.label, target, seed)].key,
                                                 repeats(suite, defense_by_label[target]), crafted.key, scored_on),
                                f"score {on_surface(target, scored_on)} under {a.label} "
                                f"{attack_budget_label(a, budget)}"
                                + (f" from {source}" if a.transfer_from else "") + f" {where}",
                                TaskAbout(ds.label, seed, defense=target, attack=a.label, attack_name=a.name,
                                          budget=budget, surface=a.surface,
                                          source=f"transfer:{source}" if a.transfer_from else "white-box",
                                          evaluated_on=scored_on))
                            # A transfer from a defense to itself is that defense's white-box cell: keep the first.
                            score.setdefault(scored.key, scored)
    return [*craft.values(), *score.values()]
