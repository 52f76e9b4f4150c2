"""The soundness checks' extra tasks (``bench.checks``), planned when a suite's ``checks`` is on.

Per dataset, seed, defense and threat model the suite attacks it in with an iterative gradient attack: that
attack unbounded and with more steps, and FGSM, at the headline budget (craft and score tasks); random noise
there (a ``check-noise`` task); each on ``CHECK_EXAMPLES`` examples and stored as ``check:*`` rows; and one
probe of the defense. For a detector, the same variants as detector-aware ``adaptive`` tasks. No suite task's
key changes: where a check's key is a suite task's, ``build_plan`` keeps the suite's task.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from .. import checks
from ..config import DatasetEntry, Suite
from ..registry import attacks, datasets
from .entries import attack_budget_label, attack_ref, dataset_ref, gradient_surface, repeats
from .grid import TrainedModels, correct_by
from .graph import Task, TaskAbout
from .specs import (AdaptiveSpec, CheckNoiseSpec, CraftedScoreSpec, CraftSpec, EntryRef, EvalSet, ProbeSpec,
                    ThresholdRule)


class Variant(NamedTuple):
    """One check's attack: its check ``source``, the registered attack, its parameters and budget."""

    source: str
    name: str
    params: dict[str, Any]
    budget: float | None  # None: no unbounded budget for images of unknown shape


def check_variants(base: Any, suite: Suite, threat_model: str, shape: tuple[int, ...] | None) -> list[Variant]:
    """The attacks of the checks of ``base`` (the suite's iterative gradient attack of ``threat_model``):
    unbounded, more steps, and (L∞) the single-step attack; the budgets not None."""
    budget = checks.headline_budget(base, suite.headline, threat_model)
    variants = [Variant(checks.UNBOUNDED, base.name, checks.unbounded_params(base.params),
                        checks.unbounded_budget(threat_model, shape)),
                Variant(checks.STRONGER, base.name, checks.stronger_params(base.params, base.name), budget)]
    if threat_model in checks.SINGLE_STEP_ATTACKS:
        # FGSM keeps the base attack's EOT draws: a stochastic defense is attacked through the same expectation.
        eot = {"eot": base.params["eot"]} if (base.params.get("eot") or 1) > 1 else {}
        variants.append(Variant(checks.SINGLE_STEP, checks.SINGLE_STEP_ATTACKS[threat_model], eot, budget))
    return [v for v in variants if v.budget is not None]


def plan_checks(suite: Suite, train: TrainedModels) -> list[Task]:
    """The checks' craft, score, check-noise and probe tasks of the suite's defenses."""
    crafts: list[Task] = []
    scores: list[Task] = []
    probes: list[Task] = []
    for ds in suite.datasets:
        shape = datasets.get(ds.name).meta.get("shape")
        for seed in suite.seeds:
            # The images the suite's attacks get (eval_correct_by), fewer: a check compares like with like.
            eval_set = EvalSet(dataset_ref(ds), min(ds.eval_size, checks.CHECK_EXAMPLES), correct_by(ds, train, seed))
            where = f"({ds.label}, seed {seed})"
            for d in suite.defenses:
                model = train[(ds.label, d.label, seed)].key
                about = TaskAbout(ds.label, seed, defense=d.label)
                covered = False
                for tm in checks.NOISE_ATTACKS:
                    base = checks.base_attack(suite.attacks, d.label, tm)
                    if base is None:
                        continue
                    covered = True
                    for v in check_variants(base, suite, tm, shape):
                        label = base.label if v.name == base.name else v.name
                        entry = base.model_copy(update={"name": v.name, "label": label, "budgets": [v.budget],
                                                        "params": attacks.get(v.name).validate(v.params)})
                        crafted = Task.of(CraftSpec(model, attack_ref(entry, d), v.budget, base.surface, eval_set,
                                                    seed),
                                          f"check: craft {label} {attack_budget_label(entry, v.budget)} on "
                                          f"{d.label}.{base.surface} {where}",
                                          replace(about, attack=checks.check_label(label, v.source)))
                        crafts.append(crafted)
                        scores.append(Task.of(
                            CraftedScoreSpec(model, repeats(suite, d), crafted.key),
                            crafted.label.replace("check: craft", "check: score", 1),
                            replace(about, attack=checks.check_label(label, v.source), attack_name=v.name,
                                           budget=v.budget, surface=base.surface, source=v.source,
                                           evaluated_on="deployed")))
                    budget = checks.headline_budget(base, suite.headline, tm)
                    noise = checks.NOISE_ATTACKS[tm]
                    scores.append(Task.of(
                        CheckNoiseSpec(model, noise, checks.NOISE_DRAWS, budget, eval_set, seed, repeats(suite, d)),
                        f"check: {noise} eps={budget:g} on {d.label} {where}",
                        replace(about, attack=noise, attack_name=noise, budget=budget, source=checks.NOISE)))
                if covered:
                    probes.append(Task.of(
                        ProbeSpec(model, eval_set, checks.PROBE_PASSES, checks.VANISHING_GRADIENT, seed,
                                  repeats(suite, d), gradient_surface(d)),
                        f"check: probe {d.label} {where}", about))
    return [*crafts, *scores, *probes]


def plan_detector_checks(suite: Suite, ds: DatasetEntry, d: Any, model: str, fit_data: tuple[str, ...],
                         about: TaskAbout, seed: int) -> list[Task]:
    """The soundness checks of a detector's guarded classifier: per threat model its detector-aware attacks
    cover, that attack unbounded and with more steps, FGSM, and random noise at the headline budget, each a
    detector-aware ``adaptive`` task on ``CHECK_EXAMPLES`` images marked with its ``check`` source (its rows'
    attack is ``check_label``'s "pgd-linf@unbounded")."""
    tasks = []
    shape = datasets.get(ds.name).meta.get("shape")
    eval_set = EvalSet(dataset_ref(ds), min(ds.eval_size, checks.CHECK_EXAMPLES))
    threshold = ThresholdRule(d.fpr if d.adaptive_threshold == "fpr" else None)
    for tm in checks.NOISE_ATTACKS:
        base = checks.base_attack(d.adaptive_attacks, d.label, tm)
        if base is None:
            continue
        variants = [v._replace(params={}) if v.source == checks.SINGLE_STEP else v
                    for v in check_variants(base, suite, tm, shape)]
        variants.append(Variant(checks.NOISE, checks.NOISE_ATTACKS[tm], {"draws": checks.NOISE_DRAWS},
                                checks.headline_budget(base, suite.headline, tm)))
        for v in variants:
            noise = v.source == checks.NOISE  # a baseline, not a registered attack: its parameters as given
            attack = EntryRef(v.name, v.params) if noise else attack_ref(
                base.model_copy(update={"name": v.name, "params": attacks.get(v.name).validate(v.params)}))
            ascends = not noise and attacks.get(v.name).factory.ascends_attack_loss
            label = checks.check_label(base.label if v.name == base.name else v.name, v.source)
            tasks.append(Task.of(
                AdaptiveSpec(model, fit_data, d.label, label, attack, v.budget, eval_set, seed, d.images,
                             base.detector_weights if ascends else [], threshold, v.source),
                f"check: detector-aware {label} eps={v.budget:g} on {d.label} ({ds.label}, seed {seed})",
                replace(about, attack=label)))
    return tasks
