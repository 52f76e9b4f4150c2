"""Planning: a validated Suite -> a task graph of train, craft and score tasks (and the detector
track's detector-data, detect and adaptive tasks).

Each task's key hashes everything that determines its output: its config, the
keys of the tasks it consumes, and the version of the code it uses (the
registry entry's ``version`` plus the version its task kind's step is registered with). Work
that cells share is planned once: a defense is trained once per dataset and
seed, and examples crafted on a transfer source are scored on every defense.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .config import AttackEntry, DatasetEntry, DefenseEntry, Suite, defense_references
from .labels import budget_label
from .metrics import OUT_DISTRIBUTION_ATTACK
from .registry import attacks, datasets, defenses, task_steps


def task_key(kind: str, config: dict[str, Any], deps: list[str]) -> str:
    """The hash of everything that determines a task's output. ``step``: the version its task kind's
    step is registered with (``bench.registry.task_steps``), bumped when the harness's own part of
    that step changes its output."""
    blob = json.dumps({"kind": kind, "step": task_steps.get(kind).version, "config": config, "deps": deps},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Task:
    kind: str                       # a registered task kind (bench.registry.task_steps): train, craft, ...
    key: str
    label: str                      # for humans: progress lines, failure summaries
    config: dict[str, Any]          # what determines the output (hashed into the key)
    deps: list[str]                 # keys of upstream tasks
    info: dict[str, Any] = field(default_factory=dict)  # descriptive fields for result rows; not hashed


@dataclass
class Plan:
    suite: Suite
    tasks: list[Task]               # topologically ordered: every task after the tasks it depends on

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.tasks]

    def by_kind(self, kind: str) -> list[Task]:
        return [t for t in self.tasks if t.kind == kind]


def _dataset_config(ds: DatasetEntry) -> dict[str, Any]:
    # ``verify: false`` (files not checked against torchvision's checksums: maybe other data) enters the
    # config, and so the keys and the rows' provenance; the default stays out, so existing keys hold.
    return {"name": ds.name, "version": datasets.get(ds.name).version, "params": ds.params,
            "train_size": ds.train_size, "test_size": ds.test_size, "subset_seed": ds.subset_seed,
            **({} if ds.verify else {"verify": False})}


def _out_distribution_config(ds: DatasetEntry) -> dict[str, Any]:
    out = ds.out_distribution
    return {"name": out.name, "version": datasets.get(out.name).version, "params": out.params,
            "exclude_classes": out.exclude_classes, "test_size": out.test_size, "subset_seed": out.subset_seed}


def _defense_config(d: DefenseEntry) -> dict[str, Any]:
    entry = defenses.get(d.name)
    # A defense whose output depends on a file its parameters name (``pretrained``'s weights) pins the file's
    # content in (its ``resolve_params``: the SHA-256), so a changed file changes the keys.
    resolve = getattr(entry.factory, "resolve_params", None)
    return {"name": d.name, "version": entry.version, "params": resolve(d.params) if resolve else d.params}


def _attack_config(a: AttackEntry, defense: DefenseEntry | None = None) -> dict[str, Any]:
    entry = attacks.get(a.name)
    params = dict(a.params)
    resolve = getattr(entry.factory, "params_for_defense", None)
    if resolve is not None and defense is not None:  # per attacked defense (autoattack's version: auto -> rand)
        params = resolve(params, stochastic=bool(getattr(defenses.get(defense.name).factory, "stochastic", False)))
    if "backend" in params and params["backend"] is None:  # resolve the default: it changes the output
        params["backend"] = entry.build(**a.params).backend  # the class's first, or what eot needs
    if params.get("eot") == 1:
        del params["eot"]  # absent without EOT, so the keys of ordinary cells do not depend on the option
    return {"name": a.name, "version": entry.version, "params": params}


# Predictions per scored example of a stochastic defense when the suite does not say (issue: a single
# draw is never the reported number for one).
DEFAULT_REPEATS = 10


def _repeats(suite: Suite, d: DefenseEntry) -> dict[str, int]:
    """The score config's ``repeats`` for defense ``d``: absent for a deterministic defense (one prediction
    is the prediction), so its keys do not depend on the option."""
    if not getattr(defenses.get(d.name).factory, "stochastic", False):
        return {}
    repeats = suite.repeats or DEFAULT_REPEATS
    return {"repeats": repeats} if repeats > 1 else {}


def _attack_eval(eval_cfg: dict[str, Any], a: Any, correct_by: str | None) -> dict[str, Any]:
    """The examples an attack entry attacks: the dataset's, or the first ``eval_size`` of them; with the
    dataset's ``eval_correct_by``, only those that defense's trained model (``correct_by``: its train task's
    key) classifies correctly. Keys are added only when set, so suites that set neither keep their keys."""
    out = dict(eval_cfg)
    if a.eval_size is not None:
        out["eval_size"] = min(a.eval_size, eval_cfg["eval_size"])
    if correct_by is not None:
        out["correct_by"] = correct_by
    return out


def _correct_by(ds: DatasetEntry, train: dict[tuple[str, str, int], Task], seed: int) -> str | None:
    """The train task whose model picks the attacked images (the dataset's ``eval_correct_by``), or None."""
    return train[(ds.label, ds.eval_correct_by, seed)].key if ds.eval_correct_by else None


def _with_referee(model_key: str, correct_by: str | None) -> list[str]:
    """A task's dependencies: the model it runs on, then the one that picks its images (when another)."""
    return list(dict.fromkeys([model_key, *([correct_by] if correct_by else [])]))


def _budget_label(attack, budget: float | None) -> str:
    return budget_label(attacks.get(attack.name).factory.budget_param, budget, symbol=False)


def _scoring_surfaces(suite: Suite, defense: str) -> list[str]:
    """Surfaces a defense's clean accuracy is needed on: deployed, plus any an attack scores on."""
    surfaces = ["deployed"]
    for a in suite.attacks:
        if a.defenses is None or defense in a.defenses:
            surfaces += [s for s in a.evaluate_on if s not in surfaces]
    return surfaces


def _evaluate_on(surface: str) -> dict[str, str]:
    # Absent for the deployed model, so the keys of ordinary cells do not depend on this option.
    return {} if surface == "deployed" else {"evaluate_on": surface}


def _on(defense: str, surface: str) -> str:
    return defense if surface == "deployed" else f"{defense}.{surface}"


def build_plan(suite: Suite) -> Plan:
    train: dict[tuple[str, str, int], Task] = {}
    craft: dict[str, Task] = {}
    score: dict[str, Task] = {}

    defense_by_label = {d.label: d for d in suite.defenses}
    for ds in suite.datasets:
        ds_cfg = _dataset_config(ds)
        eval_cfg = {"dataset": ds_cfg, "eval_size": ds.eval_size}
        for seed in suite.seeds:
            # A defense that reads another's trained model (Defense.defense_references) after the others.
            for d in sorted(suite.defenses, key=lambda d: bool(defense_references(d))):
                references = {param: train[(ds.label, label, seed)].key
                              for param, label in defense_references(d).items()}
                cfg = {"dataset": ds_cfg, "defense": _defense_config(d), "seed": seed,
                       **({"references": references} if references else {})}
                key = task_key("train", cfg, list(references.values()))
                train[(ds.label, d.label, seed)] = Task(
                    "train", key, f"train {d.label} on {ds.label} (seed {seed})", cfg, list(references.values()),
                    info={"dataset": ds.label, "defense": d.label, "seed": seed})
                for surface in _scoring_surfaces(suite, d.label):
                    clean_cfg = {"examples": "test split", "dataset": ds_cfg, "seed": seed,
                                 **_evaluate_on(surface), **_repeats(suite, d)}
                    clean = Task("score", task_key("score", clean_cfg, [key]),
                                 f"score {_on(d.label, surface)} on clean {ds.label} (seed {seed})", clean_cfg, [key],
                                 info={"dataset": ds.label, "defense": d.label, "seed": seed, "attack": None,
                                       "evaluated_on": surface})
                    score[clean.key] = clean
                if ds.out_distribution is not None:  # rejection of out-distribution images (Abbasi et al. Table I)
                    out_cfg = {"examples": "out-distribution", "out_distribution": _out_distribution_config(ds),
                               "seed": seed, **_repeats(suite, d)}
                    out = Task("score", task_key("score", out_cfg, [key]),
                               f"score {d.label} on out-distribution {ds.out_distribution.name} "
                               f"({ds.label}, seed {seed})",
                               out_cfg, [key], info={"dataset": ds.label, "defense": d.label, "seed": seed,
                                                     "attack": OUT_DISTRIBUTION_ATTACK, "evaluated_on": "deployed"})
                    score[out.key] = out

            correct_by = _correct_by(ds, train, seed)
            for a in suite.attacks:
                targets = a.defenses or [d.label for d in suite.defenses]
                for budget in a.budgets:
                    for target in targets:
                        source = a.transfer_from or target
                        source_train = train[(ds.label, source, seed)]
                        c_cfg = {"attack": _attack_config(a, defense_by_label[source]), "budget": budget,
                                 "surface": a.surface, "eval": _attack_eval(eval_cfg, a, correct_by), "seed": seed}
                        c_deps = _with_referee(source_train.key, correct_by)
                        c_key = task_key("craft", c_cfg, c_deps)
                        if c_key not in craft:
                            craft[c_key] = Task(
                                "craft", c_key,
                                f"craft {a.label} {_budget_label(a, budget)} on {source}.{a.surface} "
                                f"({ds.label}, seed {seed})",
                                c_cfg, c_deps,
                                info={"dataset": ds.label, "defense": source, "seed": seed, "attack": a.label})
                        target_train = train[(ds.label, target, seed)]
                        for scored_on in a.evaluate_on:
                            s_cfg = {"examples": "crafted", **_evaluate_on(scored_on),
                                     **_repeats(suite, defense_by_label[target])}
                            s_deps = [target_train.key, c_key]
                            s_key = task_key("score", s_cfg, s_deps)
                            # A transfer from a defense to itself is that defense's white-box cell: keep the first.
                            score.setdefault(s_key, Task(
                                "score", s_key,
                                f"score {_on(target, scored_on)} under {a.label} {_budget_label(a, budget)}"
                                + (f" from {source}" if a.transfer_from else "") + f" ({ds.label}, seed {seed})",
                                s_cfg, s_deps,
                                info={"dataset": ds.label, "defense": target, "seed": seed, "attack": a.label,
                                      "attack_name": a.name, "budget": budget, "surface": a.surface,
                                      "source": f"transfer:{source}" if a.transfer_from else "white-box",
                                      "evaluated_on": scored_on}))
    detection = _plan_detectors(suite, train)
    # Soundness checks' evidence last: where one's key is a suite task's, the suite's task (and label) is kept.
    extra = _plan_checks(suite, train) if suite.checks else []
    unique: dict[str, Task] = {}
    for task in [*train.values(), *craft.values(), *score.values(), *detection, *extra]:
        unique.setdefault(task.key, task)  # two labels for one config: one task
    return Plan(suite, list(unique.values()))


def _plan_checks(suite: Suite, train: dict[tuple[str, str, int], Task]) -> list[Task]:
    """The soundness checks' extra tasks (``bench.checks``): per dataset, seed, defense and threat model the suite
    attacks it in with an iterative gradient attack, that attack unbounded and with more steps and FGSM at the
    headline budget (craft and score tasks), random noise there (a ``check-noise`` task), each on
    ``CHECK_EXAMPLES`` examples and stored as ``check:*`` rows; and one probe of the defense. No suite task's key
    changes."""
    from . import checks

    crafts: list[Task] = []
    scores: list[Task] = []
    probes: list[Task] = []
    for ds in suite.datasets:
        ds_cfg = _dataset_config(ds)
        shape = datasets.get(ds.name).meta.get("shape")
        for seed in suite.seeds:
            # The images the suite's attacks get (eval_correct_by), fewer: a check compares like with like.
            correct_by = _correct_by(ds, train, seed)
            eval_cfg = {"dataset": ds_cfg, "eval_size": min(ds.eval_size, checks.CHECK_EXAMPLES),
                        **({"correct_by": correct_by} if correct_by else {})}
            for d in suite.defenses:
                train_task = train[(ds.label, d.label, seed)]
                deps = _with_referee(train_task.key, correct_by)
                where = f"({ds.label}, seed {seed})"
                covered = False
                for tm in checks.NOISE_ATTACKS:
                    base = checks.base_attack(suite.attacks, d.label, tm)
                    if base is None:
                        continue
                    covered = True
                    budget = checks.headline_budget(base, suite.headline, tm)
                    eot = {"eot": base.params["eot"]} if (base.params.get("eot") or 1) > 1 else {}
                    variants = [(checks.UNBOUNDED, base.name, base.label, checks.unbounded_params(base.params),
                                 checks.unbounded_budget(tm, shape), base.surface),
                                (checks.STRONGER, base.name, base.label, checks.stronger_params(base.params), budget,
                                 base.surface)]
                    if tm in checks.SINGLE_STEP_ATTACKS:
                        name = checks.SINGLE_STEP_ATTACKS[tm]
                        variants.append((checks.SINGLE_STEP, name, name, eot, budget, base.surface))
                    for source, name, label, params, b, surface in variants:
                        if b is None:  # no unbounded budget for images of unknown shape
                            continue
                        entry = base.model_copy(update={"name": name, "label": label, "budgets": [b],
                                                        "surface": surface, "params": attacks.get(name).validate(params)})
                        c_cfg = {"attack": _attack_config(entry, d), "budget": b, "surface": surface, "eval": eval_cfg,
                                 "seed": seed}
                        c_key = task_key("craft", c_cfg, deps)
                        what = f"{label} {_budget_label(entry, b)} on {d.label}.{surface} {where}"
                        crafts.append(Task("craft", c_key, f"check: craft {what}", c_cfg, deps,
                                           info={"dataset": ds.label, "defense": d.label, "seed": seed,
                                                 "attack": checks.check_label(label, source)}))
                        s_cfg = {"examples": "crafted", **_repeats(suite, d)}
                        s_deps = [train_task.key, c_key]
                        scores.append(Task("score", task_key("score", s_cfg, s_deps), f"check: score {what}", s_cfg,
                                           s_deps, info={"dataset": ds.label, "defense": d.label, "seed": seed,
                                                         "attack": checks.check_label(label, source),
                                                         "attack_name": name, "budget": b,
                                                         "surface": surface, "source": source,
                                                         "evaluated_on": "deployed"}))
                    n_cfg = {"noise": checks.NOISE_ATTACKS[tm], "draws": checks.NOISE_DRAWS, "budget": budget,
                             "eval": eval_cfg, "seed": seed, **_repeats(suite, d)}
                    scores.append(Task("check-noise", task_key("check-noise", n_cfg, deps),
                                       f"check: {n_cfg['noise']} eps={budget:g} on {d.label} {where}", n_cfg,
                                       deps, info={"dataset": ds.label, "defense": d.label, "seed": seed,
                                                               "attack": n_cfg["noise"], "budget": budget,
                                                               "source": checks.NOISE}))
                if covered:
                    p_cfg = {"eval": eval_cfg, "passes": checks.PROBE_PASSES,
                             "vanishing_below": checks.VANISHING_GRADIENT, "seed": seed, **_repeats(suite, d)}
                    probes.append(Task("probe", task_key("probe", p_cfg, deps),
                                       f"check: probe {d.label} {where}", p_cfg, deps,
                                       info={"dataset": ds.label, "defense": d.label, "seed": seed}))
    return [*crafts, *scores, *probes]


def _plan_detectors(suite: Suite, train: dict[tuple[str, str, int], Task]) -> list[Task]:
    """Detector experiments: per dataset, seed and detector, train its models (a train task like a
    defense's), build detector data per attack, evaluate the detector and each baseline on that data,
    and run the detector-aware attacks."""
    data_tasks: dict[str, Task] = {}
    later: list[Task] = []
    by_label = {a.label: a for a in suite.detector_attacks}
    for ds in suite.datasets:
        ds_cfg = _dataset_config(ds)
        for seed in suite.seeds:
            for d in suite.detectors:
                d_cfg = _defense_config(d)
                train_cfg = {"dataset": ds_cfg, "defense": d_cfg, "seed": seed}
                train_key = task_key("train", train_cfg, [])
                where = f"({ds.label}, seed {seed})"
                info = {"dataset": ds.label, "detector": d.label, "seed": seed}
                train[(ds.label, f"detector:{d.label}", seed)] = Task(
                    "train", train_key, f"train detector {d.label} on {ds.label} (seed {seed})", train_cfg, [],
                    info={**info, "defense": d.label})
                train_attacks = d.train_attacks or list(by_label)
                test_attacks = d.test_attacks or train_attacks
                data_keys: dict[str, str] = {}
                for label in dict.fromkeys([*train_attacks, *test_attacks]):
                    a = by_label[label]
                    cfg = {"dataset": ds_cfg, "attack": _attack_config(a), "budgets": a.budgets,
                           "images": d.images, "seed": seed}
                    key = task_key("detector-data", cfg, [train_key])
                    data_keys[label] = key
                    data_tasks.setdefault(key, Task(
                        "detector-data", key, f"detector data: {label} on {d.label} {where}", cfg, [train_key],
                        info={**info, "attack": label}))
                methods = [{"label": d.label, "baseline": None}]
                methods += [{"label": b.label, "baseline": {"name": b.name, "params": b.params}} for b in d.baselines]
                for method in methods:
                    # The labels are in the config: two entries that differ only in their label (or in
                    # their adaptive settings) each get their own rows.
                    cfg = {"detector": d.label, "method": method["baseline"], "method_label": method["label"],
                           "folds": d.folds, "fpr": d.fpr, "seed": seed,
                           "train_attacks": train_attacks, "test_attacks": test_attacks, "data": data_keys}
                    deps = [train_key, *dict.fromkeys(data_keys.values())]
                    later.append(Task("detect", task_key("detect", cfg, deps),
                                      f"evaluate {method['label']} on {d.label}'s data {where}", cfg, deps,
                                      info={**info, "method": method["label"]}))
                fit_keys = [data_keys[a] for a in train_attacks]
                eval_cfg = {"dataset": ds_cfg, "eval_size": ds.eval_size}
                for a in d.adaptive_attacks:
                    for budget in a.budgets:
                        weights = a.detector_weights if attacks.get(a.name).factory.ascends_attack_loss else []
                        cfg = {"detector": d.label, "attack_label": a.label, "attack": _attack_config(a),
                               "budget": budget, "eval": eval_cfg, "seed": seed,
                               "detector_images": d.images, "detector_weights": weights,
                               "threshold": _threshold_rule(d)}
                        deps = [train_key, *dict.fromkeys(fit_keys)]
                        later.append(Task("adaptive", task_key("adaptive", cfg, deps),
                                          f"detector-aware {a.label} {_budget_label(a, budget)} on {d.label} {where}",
                                          cfg, deps, info={**info, "attack": a.label, "train_attacks": train_attacks}))
                if suite.checks:
                    later += _plan_detector_checks(suite, ds, d, seed, [train_key, *dict.fromkeys(fit_keys)],
                                                   {**info, "train_attacks": train_attacks})
    return [*data_tasks.values(), *later]


def _threshold_rule(d: Any) -> dict[str, Any]:
    """The guarded classifier's operating point of a detector entry (``adaptive_threshold``)."""
    return {"rule": "fpr", "fpr": d.fpr} if d.adaptive_threshold == "fpr" else {"rule": "classifier"}


def _plan_detector_checks(suite: Suite, ds: DatasetEntry, d: Any, seed: int, deps: list[str],
                          info: dict[str, Any]) -> list[Task]:
    """The soundness checks of a detector's guarded classifier (``bench.checks``): per threat model its
    detector-aware attacks cover, that attack unbounded and with more steps, FGSM, and random noise at the
    headline budget, each a detector-aware ``adaptive`` task on ``CHECK_EXAMPLES`` images marked with its
    ``check`` source (its rows' attack is ``check_label``'s "pgd-linf@unbounded")."""
    from . import checks

    tasks = []
    shape = datasets.get(ds.name).meta.get("shape")
    eval_cfg = {"dataset": _dataset_config(ds), "eval_size": min(ds.eval_size, checks.CHECK_EXAMPLES)}
    where = f"({ds.label}, seed {seed})"
    for tm in checks.NOISE_ATTACKS:
        base = checks.base_attack(d.adaptive_attacks, d.label, tm)
        if base is None:
            continue
        budget = checks.headline_budget(base, suite.headline, tm)
        variants = [(checks.UNBOUNDED, base.name, checks.unbounded_params(base.params), checks.unbounded_budget(tm, shape)),
                    (checks.STRONGER, base.name, checks.stronger_params(base.params), budget)]
        if tm in checks.SINGLE_STEP_ATTACKS:
            variants.append((checks.SINGLE_STEP, checks.SINGLE_STEP_ATTACKS[tm], {}, budget))
        variants.append((checks.NOISE, checks.NOISE_ATTACKS[tm], {"draws": checks.NOISE_DRAWS}, budget))
        for source, name, params, b in variants:
            if b is None:  # no unbounded budget for images of unknown shape
                continue
            noise = source == checks.NOISE  # a baseline, not a registered attack: its parameters as given
            attack = {"name": name, "params": params} if noise else \
                _attack_config(base.model_copy(update={"name": name, "params": attacks.get(name).validate(params)}))
            ascends = not noise and attacks.get(name).factory.ascends_attack_loss
            label = checks.check_label(base.label if name == base.name else name, source)
            cfg = {"detector": d.label, "attack_label": label, "attack": attack, "budget": b, "eval": eval_cfg,
                   "seed": seed, "detector_images": d.images,
                   "detector_weights": base.detector_weights if ascends else [],
                   "threshold": _threshold_rule(d), "check": source}
            tasks.append(Task("adaptive", task_key("adaptive", cfg, deps),
                              f"check: detector-aware {label} eps={b:g} on {d.label} {where}", cfg, deps,
                              info={**info, "attack": label}))
    return tasks
