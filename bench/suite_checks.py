"""A suite's checks beyond its schema: registry names and each entry's typed parameters, budgets the attack
cannot take, attack surfaces, transfer sources and label references, split sizes and input shapes, whether each
dataset is on disk, the detector protocol, and what is wasteful rather than wrong (warnings). Every problem is
one line naming file and key; ``bench.config.load_suite`` raises them all at once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pydantic

from .attacks.base import BUDGET_KINDS, shape_words
from .defense import Defense, DetectorDefense, defense_class_flag
from .errors import UserError
from .registry import UnknownName, attacks, baseline_detectors, certifiers, datasets, defenses
from .threat_models import ThreatModel
from .suite_schema import DatasetEntry, DefenseEntry, OutDistributionEntry, Suite, schema_errors


def _check_entry(registry, entry, key: str, path: str, errors: list[str]):
    """Resolve a registry name and validate its params; return the built object or None."""
    try:
        reg_entry = registry.get(entry.name)
    except UnknownName as e:
        errors.append(f"{path}: {key}.name: {e}")
        return None
    params = dict(entry.params)
    backend_key = f"{key}.params.backend"
    if getattr(entry, "backend", None) is not None:
        params["backend"] = entry.backend
        backend_key = f"{key}.backend"  # an entry-level key, checked with the attack's parameters
    try:
        validated = reg_entry.validate(params)
    except pydantic.ValidationError as e:
        problems = []
        for problem in e.errors():
            own = _attack_key_problem(registry, reg_entry, entry, key, backend_key, problem)
            if own is not None:
                errors.append(f"{path}: {own}")
            else:
                problems.append(problem)
        errors.extend(schema_errors(path, f"{key}.params", problems, known=[p.name for p in reg_entry.params]))
        return None
    entry.params = validated
    if registry is datasets or registry is baseline_detectors:
        return reg_entry  # a dataset builds by loading, a baseline detector around a trained model
    try:
        return reg_entry.factory(**validated)
    except pydantic.ValidationError as e:  # a nested entry's parameters (arch_params, member_params), on one line
        errors.extend(f"{path}: {key}.params: {e.title}: {problem.removeprefix(f'{path}: ')}"
                      for problem in schema_errors(path, "", e))
    except UnknownName as e:
        errors.append(f"{path}: {key}.params: {e}")
    except (ValueError, TypeError) as e:
        errors.append(f"{path}: {key}.params: {e}")
    return None


# Keys a user may write for an attack's budget (beside its budget kind's own name, e.g. eps or c).
_BUDGET_WORDS = ("budget", "budgets", "epsilon")


def _attack_key_problem(registry, reg_entry, entry, key: str, backend_key: str, problem: dict) -> str | None:
    """"<key>: <message>" for a problem with an attack entry's parameters that the generic wording gets wrong,
    else None: its budget given as a parameter (it goes under ``budgets``), and a backend the attack lacks
    (an entry-level key, named as such, with the attack's backends)."""
    if registry is not attacks or not problem["loc"]:
        return None
    name, factory = problem["loc"][0], reg_entry.factory
    if name == "backend" and len(problem["loc"]) == 1:
        backends = list(getattr(factory, "backends", ()))
        listed = ", ".join(f"{b} (the default)" if i == 0 else b for i, b in enumerate(backends))
        return f"{backend_key}: {entry.name!r} has no backend {problem['input']!r}; its backends: {listed}"
    budget_param = getattr(factory, "budget_param", None)
    if (problem["type"] == "extra_forbidden" and len(problem["loc"]) == 1 and hasattr(entry, "budgets")
            and budget_param is not None and (name == budget_param or name in _BUDGET_WORDS)):
        return (f"{key}.params.{name}: the budget is not a parameter; list it under {key}.budgets (a list: "
                f"{entry.name} runs once per budget)")
    return None


def _defense_label_problem(name: str, labels: list[str], detectors: dict[str, int], role: str) -> str:
    """Why ``name`` is not a defense label of the suite: a detector's (and how detectors are attacked), or
    unknown (with close matches). ``role``: what the key asks of a defense, e.g. "attack"."""
    if name in detectors:
        i = detectors[name]
        return (f"{name!r} is a detector (detectors[{i}]), which an attack entry cannot {role}: a detector's data "
                f"is built by detector_attacks, and a detector-aware attack on the classifier it guards (the "
                f"detector folded in as an extra class) goes under detectors[{i}].adaptive_attacks")
    return str(UnknownName("defense label", name, labels))


def _unique_labels(items, key: str, path: str, errors: list[str]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        item.label = item.label or item.name
        if item.label in seen:
            errors.append(f"{path}: {key}[{i}].label: duplicate label {item.label!r}; give each entry its own label")
        seen.add(item.label)


def check_semantics(suite: Suite, path: str, data_ctx, warnings: list[str] | None = None) -> list[str]:
    """Every problem of a parsed suite, one message each; what is wasteful but not wrong goes to ``warnings``."""
    errors: list[str] = []
    warnings = [] if warnings is None else warnings
    for key, items in (("datasets", suite.datasets), ("defenses", suite.defenses), ("attacks", suite.attacks),
                       ("detector_attacks", suite.detector_attacks), ("detectors", suite.detectors),
                       ("certificates", suite.certificates)):
        _unique_labels(items, key, path, errors)
    if not suite.defenses and not suite.detectors:
        errors.append(f"{path}: defenses: a suite needs at least one defense or detector")

    shapes: dict[str, tuple[int, ...] | None] = {}  # dataset label -> its images' (C, H, W); None: unknown
    train_splits: dict[str, int] = {}  # dataset label -> its train split's size, where known
    for i, ds in enumerate(suite.datasets):
        entry = _check_entry(datasets, ds, f"datasets[{i}]", path, errors)
        if not entry:
            continue
        shapes[ds.label] = entry.meta.get("shape")
        train = _check_sizes(entry, ds, f"datasets[{i}]", path, errors)
        if train is not None:
            train_splits[ds.label] = train
        from .data import check_available, has_checksums

        if not ds.verify and not has_checksums(ds.name):
            with_checksums = [e.name for e in datasets.entries() if has_checksums(e.name)]
            errors.append(f"{path}: datasets[{i}].verify: {ds.name!r} has no checksums to skip; verify: false "
                          f"applies to {', '.join(with_checksums)}")
        elif data_ctx is not None:
            try:  # opens each file (headers, sizes) and, unless verify: false, compares torchvision's MD5s
                check_available(ds.name, ds.params, dataclasses.replace(data_ctx, verify=ds.verify))
            except UserError as e:
                errors.append(f"{path}: datasets[{i}]: {e}")
        if ds.out_distribution is not None:
            _check_out_distribution(ds.out_distribution, shapes[ds.label], f"datasets[{i}].out_distribution", path,
                                    errors, data_ctx)

    surfaces: dict[str, set[str]] = {}
    loss_surfaces: dict[str, set[str]] = {}
    stochastic: dict[str, bool] = {}  # defense label -> whether it decides with randomness at test time
    for i, d in enumerate(suite.defenses):
        defense = _check_entry(defenses, d, f"defenses[{i}]", path, errors)
        if isinstance(defense, DetectorDefense):
            errors.append(f"{path}: defenses[{i}].name: {d.name!r} is a detector; list it under detectors "
                          "(with detector_attacks to build its data)")
        elif defense is not None:
            surfaces[d.label] = set(defense.surface_names())
            loss_surfaces[d.label] = set(defense.loss_surface_names())
            stochastic[d.label] = bool(defense.stochastic)
            _check_input_shapes(defense, shapes, f"defenses[{i}]", path, errors)

    labels = [d.label for d in suite.defenses]
    detector_labels = {d.label: i for i, d in enumerate(suite.detectors)}
    _check_defense_references(suite, labels, path, errors)
    for i, ds in enumerate(suite.datasets):
        if ds.eval_correct_by is not None and ds.eval_correct_by not in labels:
            errors.append(f"{path}: datasets[{i}].eval_correct_by: "
                          f"{_defense_label_problem(ds.eval_correct_by, labels, detector_labels, 'select images by')}")
    eps_budgets: dict[str, set[float]] = {}  # threat model -> the eps budgets some attack runs at
    for i, a in enumerate(suite.attacks):
        key = f"attacks[{i}]"
        attack = _check_entry(attacks, a, key, path, errors)
        if attack is None:
            continue
        _check_budgets(attack, a.budgets, key, path, errors, shapes)
        # Every threat model an attack runs in has an entry; a minimum-norm attack's (C&W's c) adds no budget.
        budgets = eps_budgets.setdefault(str(type(attack).threat_model), set())
        if type(attack).budget_param == "eps":
            budgets.update(b for b in a.budgets if b is not None)
        targets = [a.transfer_from] if a.transfer_from else (a.defenses or labels)
        _warn_eot(attack, a.params, [t for t in targets if t in stochastic], stochastic, key, path, warnings)
        for ds in suite.datasets:
            if a.eval_size is not None and a.eval_size > ds.eval_size:
                errors.append(f"{path}: {key}.eval_size: {a.eval_size} examples, more than dataset "
                              f"{(ds.label or ds.name)!r} attacks (its eval_size: {ds.eval_size})")
        for name in (a.defenses or []):
            if name not in labels:
                errors.append(f"{path}: {key}.defenses: "
                              f"{_defense_label_problem(name, labels, detector_labels, 'attack')}")
        if a.transfer_from is not None:
            if a.transfer_from not in labels:
                errors.append(f"{path}: {key}.transfer_from: "
                              f"{_defense_label_problem(a.transfer_from, labels, detector_labels, 'craft on')}")
            elif a.surface not in surfaces.get(a.transfer_from, {a.surface}):
                unknown = UnknownName("attack surface", a.surface, sorted(surfaces[a.transfer_from]))
                errors.append(f"{path}: {key}.surface: {unknown}")
        backend = getattr(attack, "backend", None)
        for label in ([a.transfer_from] if a.transfer_from else (a.defenses or labels)):
            if a.surface in loss_surfaces.get(label, set()) and backend != "torch":
                hint = "set backend: torch" if "torch" in type(attack).backends else \
                    f"use an attack with a torch backend (this one has {', '.join(type(attack).backends)})"
                errors.append(f"{path}: {key}.surface: {label!r}'s surface {a.surface!r} defines its own loss, "
                              f"which only the plain PyTorch backend uses; {a.name} runs on {backend}: {hint}")
                break
        checks = [(f"{key}.evaluate_on[{j}]", name) for j, name in enumerate(a.evaluate_on)]
        if a.transfer_from is None:
            checks.append((f"{key}.surface", a.surface))
        for label in (a.defenses or labels):
            known = surfaces.get(label)
            for where, name in checks:
                if known is not None and name not in known:
                    errors.append(f"{path}: {where}: defense {label!r} has no attack surface {name!r} "
                                  f"(it has {', '.join(sorted(known))})")
    known = [t.value for t in ThreatModel]
    for tm, budget in suite.headline.items():
        if tm not in known:
            errors.append(f"{path}: headline.{tm}: {UnknownName('threat model', tm, known)}")
            continue
        bound = BUDGET_KINDS["eps"].upper_for(tm)  # the same bound an attack's eps budget has, for every dataset
        for shape in dict.fromkeys(shapes.values()) or [None]:
            limit = bound.bound_for(shape) if bound is not None else math.inf
            if not (math.isfinite(budget) and budget > 0) or budget > limit:
                at_most = "" if bound is None else f" and at most {limit:.4g}" + (
                    f" for {shape_words(shape)}" if bound.dims_power else "")
                errors.append(f"{path}: headline.{tm}: the headline eps must be > 0 and finite{at_most}, got {budget}")
                break
        else:
            _check_headline(tm, budget, eps_budgets.get(tm), path, errors, warnings)
    _check_detectors(suite, path, errors, shapes, train_splits, warnings)
    _check_certificates(suite, labels, path, errors)
    return errors


def _check_certificates(suite: Suite, labels: list[str], path: str, errors: list[str]) -> None:
    """Each certificate entry: a registered method with valid parameters, a threat model it certifies, defenses
    that exist and that it can certify, no more images than the datasets attack."""
    for i, c in enumerate(suite.certificates):
        key = f"certificates[{i}]"
        certifier = _check_entry(certifiers, c, key, path, errors)
        if certifier is None:
            continue
        if c.threat_model is not None and c.threat_model not in certifier.threat_models:
            errors.append(f"{path}: {key}.threat_model: {c.name} certifies {', '.join(certifier.threat_models)}, "
                          f"not {c.threat_model}")
        if any(not (b > 0 and math.isfinite(b)) for b in (c.budgets or [])):
            errors.append(f"{path}: {key}.budgets: every budget must be > 0 and finite, got {c.budgets}")
        by_label = {d.label: d for d in suite.defenses}
        for label in c.defenses or []:
            if label not in by_label:
                errors.append(f"{path}: {key}.defenses: {_defense_label_problem(label, labels, {}, 'certify')}")
            elif by_label[label].name in defenses and (
                    why := certifier.applies_to(defenses.get(by_label[label].name).factory)) is not None:
                errors.append(f"{path}: {key}.defenses: cannot certify {label!r}: {why}")
        for ds in suite.datasets:
            if c.eval_size is not None and c.eval_size > ds.eval_size:
                errors.append(f"{path}: {key}.eval_size: {c.eval_size} examples, more than dataset "
                              f"{(ds.label or ds.name)!r} attacks (its eval_size: {ds.eval_size})")


def _check_headline(tm: str, budget: float, ran: set[float] | None, path: str, errors: list[str],
                    warnings: list[str]) -> None:
    """The headline eps of threat model ``tm`` must be a budget some attack of the suite runs at (``ran``: the
    bounded eps budgets of its attacks of that threat model; None: no attack runs in it).

    Refused where attacks of that threat model run at other eps budgets: the leaderboard would silently
    headline one of those instead (the largest every attack of a table ran at), answering a question the
    user did not ask, and nothing has run yet that a correction would cost. Accepted where its attacks are
    all minimum-norm ones (C&W's c, DeepFool): the best-known robust accuracy at that eps counts their
    examples by their perturbation sizes (bench.report.best_known). Warned where no attack runs in it."""
    if ran is not None and (budget in ran or not ran):
        return
    words = f"{ThreatModel.label_of(tm)} eps"
    if ran is None:
        warnings.append(f"{path}: headline.{tm}: no attack of the suite runs in {ThreatModel.label_of(tm)}: this "
                        f"headline changes nothing; remove it, or add an attack of that threat model")
        return
    close = [b for b in sorted(ran) if math.isclose(b, budget, rel_tol=1e-3)]
    hint = f"; did you mean {close[0]!r} (the budgets must be the same number)?" if close else ""
    errors.append(f"{path}: headline.{tm}: no attack runs at {words} {budget:g}: the leaderboard would fall back to "
                  f"another budget without a word; the {words} budgets that run: "
                  f"{', '.join(f'{b:g}' for b in sorted(ran))}{hint}")


def _warn_eot(attack, params: dict[str, Any], targets: list[str], stochastic: dict[str, bool], key: str,
              path: str, warnings: list[str]) -> None:
    """``eot: k`` (k > 1) on an attack of a deterministic defense: a warning (``targets``: the labels it
    crafts on).

    Warned, not refused: the numbers are right (the average of k equal gradients is that gradient), only k
    times the work; and one attack entry may rightly serve stochastic and deterministic defenses alike (the
    default, every defense), where splitting it is the user's call. An attack whose targets are all
    stochastic is what EOT is for: no warning."""
    eot = params.get("eot")
    if not isinstance(eot, int) or eot <= 1 or not getattr(attack, "uses_gradients", True):
        return
    deterministic = [t for t in targets if not stochastic.get(t, False)]
    if not deterministic:
        return
    names = ", ".join(repr(t) for t in deterministic)
    only = [t for t in targets if stochastic.get(t, False)]
    hint = (f"; attack only the stochastic ones (defenses: [{', '.join(only)}])" if only else
            "; eot is for stochastic defenses (test-time randomness): use eot: 1")
    plural = "s" if len(deterministic) > 1 else ""
    warnings.append(f"{path}: {key}.params.eot: eot: {eot} on the deterministic defense{plural} {names}: "
                    f"{_times(eot)} the work for the same gradient{hint}")


def _times(k: int) -> str:
    words = {2: "twice", 3: "three times", 4: "four times", 5: "five times", 10: "ten times", 20: "twenty times",
             100: "a hundred times"}
    return words.get(k, f"{k} times")


def _check_out_distribution(out: OutDistributionEntry, shape: tuple[int, ...] | None, key: str, path: str,
                            errors: list[str], data_ctx) -> None:
    """An out-distribution test set: a registered dataset with valid parameters, images of the in-distribution
    shape, test_size within its test split (where known), and on disk."""
    entry = _check_entry(datasets, out, key, path, errors)
    if entry is None:
        return
    theirs = entry.meta.get("shape")
    if theirs is not None and shape is not None and tuple(theirs) != tuple(shape):
        errors.append(f"{path}: {key}.name: {out.name!r} has {'x'.join(map(str, theirs))} images, the dataset "
                      f"{'x'.join(map(str, shape))}")
    sizes = entry.meta.get("sizes")
    if sizes is not None and out.test_size is not None:
        try:
            test = sizes(out.params)[1]
            if out.test_size > test:
                errors.append(f"{path}: {key}.test_size: {out.test_size}, but the test split of {out.name!r} "
                              f"has {test}")
        except ValueError as e:
            errors.append(f"{path}: {key}.params: {e}")
    if data_ctx is not None:
        from .data import check_available

        try:
            check_available(out.name, out.params, data_ctx)
        except UserError as e:
            errors.append(f"{path}: {key}: {e}")


def _check_defense_references(suite: Suite, labels: list[str], path: str, errors: list[str]) -> None:
    """A parameter naming another defense (``Defense.defense_references``) must name a trained classifier of the
    suite other than itself, which does not itself read another defense (one level, no cycles)."""
    referring = {d.label for d in suite.defenses if defense_references(d)}
    for i, d in enumerate(suite.defenses):
        for param, label in defense_references(d).items():
            where = f"{path}: defenses[{i}].params.{param}"
            if label not in labels:
                errors.append(f"{where}: {UnknownName('defense label', label, labels)}")
            elif label == d.label:
                errors.append(f"{where}: {label!r} is this defense itself")
            elif label in referring:
                errors.append(f"{where}: {label!r} reads another defense's model itself; name one that does not")


def defense_references(d: DefenseEntry) -> dict[str, str]:
    """The parameters of a defense entry that name other defenses, and the labels they name."""
    try:
        names = defenses.get(d.name).factory.defense_references
    except Exception:  # an unknown defense is reported by its own check
        return {}
    return {p: d.params[p] for p in names if d.params.get(p) is not None}


def _check_sizes(entry, ds: DatasetEntry, key: str, path: str, errors: list[str]) -> int | None:
    """``train_size``, ``test_size`` and ``eval_size`` against the split sizes the dataset's registry entry
    knows without loading it (its ``sizes`` meta; none: checked when it loads); the train split's size
    (the subset's, with ``train_size``), or None where unknown."""
    sizes = entry.meta.get("sizes")
    if sizes is None:
        return None
    try:
        train, test = sizes(ds.params)
    except ValueError as e:  # parameters the dataset cannot split by, e.g. test_fraction: 0
        errors.append(f"{path}: {key}.params: {e}")
        return None
    if not ds.verify:  # a local copy accepted as it is (a cleaned subset...) need not have the official sizes
        return None
    for field, size, split, name in (("train_size", ds.train_size, train, "train"),
                                     ("test_size", ds.test_size, test, "test")):
        if size is not None and size > split:
            errors.append(f"{path}: {key}.{field}: {size}, but the {name} split of {ds.name!r} has {split} examples")
    tested = min(ds.test_size or test, test)
    # Unset, eval_size is "1000, or the whole test split if it is smaller"; set, it must be there.
    if "eval_size" in ds.model_fields_set and ds.eval_size > tested:
        subset = " subset (test_size)" if ds.test_size is not None and ds.test_size < test else ""
        errors.append(f"{path}: {key}.eval_size: {ds.eval_size} test examples to attack, but the test split{subset} "
                      f"of {ds.name!r} has {tested}")
    return min(ds.train_size or train, train)


def _is_detector(factory) -> bool:
    return isinstance(factory, type) and issubclass(factory, DetectorDefense)


def _check_budgets(attack, budgets: list[float | None], key: str, path: str, errors: list[str],
                   shapes: dict[str, tuple[int, ...] | None]) -> None:
    """Each budget against the attack's budget kind, for the images of every dataset it runs on (``shapes``:
    dataset label -> (C, H, W), None where unknown)."""
    for j, budget in enumerate(budgets):
        for shape in dict.fromkeys(shapes.values()) or [None]:
            problem = type(attack).budget_error(budget, shape)
            if problem:
                errors.append(f"{path}: {key}.budgets[{j}]: {problem}")
                break


def _check_input_shapes(defense: Defense, shapes: dict[str, tuple[int, ...] | None], key: str, path: str,
                        errors: list[str]) -> None:
    """A defense built from the user's own network (``pretrained``; an ensemble or detector with loaded
    models) checks it takes each dataset's images."""
    for label, shape in shapes.items():
        try:
            if shape is not None:
                defense.check_input_shape(shape)  # Defense's default: any shape
        except (ValueError, UnknownName) as e:
            errors.append(f"{path}: {key}.params: dataset {label!r}: {e}")
            break


def _check_detectors(suite: Suite, path: str, errors: list[str], shapes: dict[str, tuple[int, ...] | None],
                     train_splits: dict[str, int], warnings: list[str] | None = None) -> None:
    """The detector experiments: detector defenses, the attacks building their data, baselines and
    detector-aware attacks (``shapes`` and ``train_splits``: by dataset label, where known); ``warnings``
    gets what is wasteful but not wrong."""
    warnings = [] if warnings is None else warnings
    stochastic = {d.label: d.name in defenses and bool(defense_class_flag(defenses.get(d.name).factory, "stochastic"))
                  for d in suite.detectors}
    for i, a in enumerate(suite.detector_attacks):
        attack = _check_entry(attacks, a, f"detector_attacks[{i}]", path, errors)
        if attack is not None:
            _check_budgets(attack, a.budgets, f"detector_attacks[{i}]", path, errors, shapes)
            _warn_eot(attack, a.params, list(stochastic), stochastic, f"detector_attacks[{i}]", path, warnings)
    known_attacks = [a.label for a in suite.detector_attacks]
    for i, d in enumerate(suite.detectors):
        key = f"detectors[{i}]"
        if d.name in defenses and not _is_detector(defenses.get(d.name).factory):
            detectors = [e.name for e in defenses.entries() if _is_detector(e.factory)]
            errors.append(f"{path}: {key}.name: {d.name!r} is a defense, not a detector "
                          f"(detectors: {', '.join(detectors)}); list it under defenses")
        else:
            detector = _check_entry(defenses, d, key, path, errors)
            if detector is not None:
                _check_input_shapes(detector, shapes, key, path, errors)
        if not known_attacks:
            errors.append(f"{path}: {key}: a detector needs detector_attacks to build its data from")
        for label, train in train_splits.items():
            if d.images > train:
                errors.append(f"{path}: {key}.images: {d.images} training-split images per attack, but dataset "
                              f"{label!r} has {train} in its train split")
                break
        for field in ("train_attacks", "test_attacks"):
            for name in getattr(d, field) or []:
                if name not in known_attacks:
                    errors.append(f"{path}: {key}.{field}: {UnknownName('detector attack label', name, known_attacks)}")
        _unique_labels(d.baselines, f"{key}.baselines", path, errors)
        for j, b in enumerate(d.baselines):
            entry = _check_entry(baseline_detectors, b, f"{key}.baselines[{j}]", path, errors)
            if entry is not None:
                from torch import nn

                try:  # ranges: build around a stand-in model, as the run will around the trained one
                    entry.factory(nn.Identity(), **b.params)
                except (ValueError, TypeError) as e:
                    errors.append(f"{path}: {key}.baselines[{j}].params: {e}")
            if b.label == d.label:
                errors.append(f"{path}: {key}.baselines[{j}].label: {b.label!r} is the detector's own label")
        _unique_labels(d.adaptive_attacks, f"{key}.adaptive_attacks", path, errors)
        for j, a in enumerate(d.adaptive_attacks):
            where = f"{key}.adaptive_attacks[{j}]"
            try:
                factory = attacks.get(a.name).factory
            except UnknownName as e:
                errors.append(f"{path}: {where}.name: {e}")
                continue
            if "torch" not in factory.backends:
                with_torch = [e.name for e in attacks.entries() if "torch" in e.factory.backends]
                errors.append(f"{path}: {where}.name: a detector-aware attack needs the plain PyTorch backend, "
                              f"which {a.name!r} lacks (attacks with it: {', '.join(with_torch)})")
                continue
            attack = _check_entry(attacks, a, where, path, errors)
            if attack is not None:
                _check_budgets(attack, a.budgets, where, path, errors, shapes)
                _warn_eot(attack, a.params, [d.label], stochastic, where, path, warnings)
            for k, weight in enumerate(a.detector_weights):
                if not weight > 0:
                    errors.append(f"{path}: {where}.detector_weights[{k}]: must be > 0, got {weight}")
