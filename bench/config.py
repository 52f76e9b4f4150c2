"""The suite schema: a YAML file -> a validated ``Suite``.

Every mistake a user can make in a suite ends here as one ``UserError`` whose
message names the file and the key (``suites/x.yaml: attacks[1].budgets[0]: ...``).
Validation goes all the way down: registry names (with close-match
suggestions), each factory's typed parameters, budgets the attack cannot take,
attack surfaces, transfer sources, and whether each dataset is on disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from .attacks.base import BUDGET_KINDS
from .defense import DetectorDefense
from .errors import UserError
from .registry import UnknownName, attacks, baseline_detectors, datasets, defenses
from .threat_models import ThreatModel


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    train_size: int | None = Field(None, gt=0, description="random subset of the training split")
    test_size: int | None = Field(None, gt=0, description="random subset of the test split (clean accuracy)")
    eval_size: int = Field(1000, gt=0, description="test examples that are attacked")
    subset_seed: int = 0
    verify: bool = Field(True, description="check the files against torchvision's MD5 checksums; false accepts a "
                                           "local copy that differs (the structural checks still run, and each "
                                           "result records it)")


class DefenseEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class AttackEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    budgets: list[float | None] = Field(min_length=1)
    surface: str = "deployed"
    transfer_from: str | None = Field(None, description="craft on this defense's deployed model, score on all")
    defenses: list[str] | None = Field(None, description="defense labels to attack; default all")
    evaluate_on: list[str] = Field(default_factory=lambda: ["deployed"], min_length=1,
                                   description="surfaces of each defense that score the examples, e.g. member:0")


class DetectorAttackEntry(_Strict):
    """An attack that builds detector data: its budgets are the ladder of the per-image minimal-budget
    search (smallest first; ``null`` = unbounded, the attack's own minimal search, tried last)."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    budgets: list[float | None] = Field(min_length=1)


class BaselineEntry(_Strict):
    """A baseline detector scored on the same detector data (e.g. feature squeezing on model_a)."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class AdaptiveAttackEntry(_Strict):
    """A detector-aware attack: run on the guarded classifier with the detector folded in as an extra
    class (plain PyTorch backend), and, for comparison, on the guarded model alone (``params.backend``
    picks that run's backend)."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    budgets: list[float | None] = Field(min_length=1)
    detector_weights: list[float] = Field(
        default_factory=lambda: [0.1, 0.3, 1.0], min_length=1,
        description="weights of the detector's term in a gradient attack's loss, tried in turn; each image "
                    "keeps the first example that gets through (C&W ignores them: its own search balances)")


class DetectorEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    images: int = Field(2000, ge=20, description="training-split images per attack (paper: 10,000)")
    folds: int = Field(10, ge=2, description="cross-validation folds (paper: 10)")
    fpr: float = Field(0.05, gt=0, lt=1, description="false-positive rate of the TPR-at-FPR threshold")
    train_attacks: list[str] | None = Field(None, description="labels of detector_attacks; default all")
    test_attacks: list[str] | None = Field(None, description="labels of detector_attacks; default train_attacks")
    baselines: list[BaselineEntry] = Field(default_factory=list)
    adaptive_attacks: list[AdaptiveAttackEntry] = Field(default_factory=list)
    adaptive_threshold: Literal["fpr", "classifier"] = Field(
        "fpr", description="the guarded classifier's operating point: flag a fraction `fpr` of clean held-out "
                           "test images, or the binary classifier's own decision")


class Suite(_Strict):
    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: int = Field(256, gt=0, description="attack and evaluation batch size")
    datasets: list[DatasetEntry] = Field(min_length=1)
    defenses: list[DefenseEntry] = Field(default_factory=list)
    attacks: list[AttackEntry] = Field(default_factory=list)
    detector_attacks: list[DetectorAttackEntry] = Field(default_factory=list)
    detectors: list[DetectorEntry] = Field(default_factory=list)
    repeats: int | None = Field(
        None, ge=1, le=1000, description="predictions per scored example for a stochastic defense (fresh "
                                         "randomness each); default 10 for stochastic defenses, 1 otherwise")
    headline: dict[str, float] = Field(
        default_factory=dict, description="per threat model (linf, l2, ...), the eps budget of the leaderboard's "
                                          "headline; default: the largest budget every attack of a table ran at")
    path: str = Field("", exclude=True)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The schema class that holds the last key of ``loc`` (walking fields, list items and Optionals)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = [a for a in typing.get_args(field.annotation) or (field.annotation,)]
        inner = [b for a in inner for b in (typing.get_args(a) or (a,))]  # list[X] | None -> X
        models = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _pydantic_errors(path: str, prefix: str, err: pydantic.ValidationError, *,
                     schema: type[BaseModel] | None = None, known: list[str] | None = None) -> list[str]:
    """One message per problem. An unknown key gets close matches among the keys that are allowed there:
    ``known`` (a registry entry's parameters) or the fields of ``schema`` at that place."""
    msgs = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p != "__root__")
        key = _loc(loc)
        full = ".".join(k for k in (prefix, key) if k).replace(".[", "[")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            model = _model_at(schema, loc) if schema is not None else None
            allowed = known if known is not None else (list(model.model_fields) if model else [])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=3, cutoff=0.6) if loc else []
            msg = "unknown key" + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else
                                   f" (allowed: {', '.join(allowed)})" if allowed else "")
        msgs.append(f"{path}: {full}: {msg}" if full else f"{path}: {msg}")
    return msgs


def load_suite(path: str | Path, *, data_ctx=None) -> Suite:
    """Read and fully validate a suite; raise UserError with the first problem found.

    ``data_ctx`` (a ``bench.data.DataContext``) enables the check that each dataset is
    available; without it that check is skipped (e.g. for ``advbench validate`` without
    a data directory, the CLI passes its default one).
    """
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{shown}: cannot read suite: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise UserError(f"{shown}: {where}malformed YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{shown}: a suite must be a mapping with keys name, datasets, defenses, attacks")
    raw.setdefault("name", path.stem)
    try:
        suite = Suite(**raw)
    except pydantic.ValidationError as e:
        _raise_all(_pydantic_errors(shown, "", e, schema=Suite), shown)
    suite.path = shown
    _raise_all(_check_semantics(suite, shown, data_ctx), shown)
    return suite


def _raise_all(errors: list[str], path: str) -> None:
    """Every problem found, on one line: the first with the file's name, the others after it."""
    if errors:
        rest = [e.removeprefix(f"{path}: ") for e in dict.fromkeys(errors[1:])]
        raise UserError("; ".join([errors[0], *rest]))


def _check_entry(registry, entry, key: str, path: str, errors: list[str]):
    """Resolve a registry name and validate its params; return the built object or None."""
    try:
        reg_entry = registry.get(entry.name)
    except UnknownName as e:
        errors.append(f"{path}: {key}.name: {e}")
        return None
    params = dict(entry.params)
    if getattr(entry, "backend", None) is not None:
        params["backend"] = entry.backend
    try:
        validated = reg_entry.validate(params)
    except pydantic.ValidationError as e:
        errors.extend(_pydantic_errors(path, f"{key}.params", e, known=[p.name for p in reg_entry.params]))
        return None
    entry.params = validated
    if registry is datasets or registry is baseline_detectors:
        return reg_entry  # a dataset builds by loading, a baseline detector around a trained model
    try:
        return reg_entry.factory(**validated)
    except UnknownName as e:
        errors.append(f"{path}: {key}.params: {e}")
    except (ValueError, TypeError) as e:
        errors.append(f"{path}: {key}.params: {e}")
    return None


def _unique_labels(items, key: str, path: str, errors: list[str]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        item.label = item.label or item.name
        if item.label in seen:
            errors.append(f"{path}: {key}[{i}].label: duplicate label {item.label!r}; give each entry its own label")
        seen.add(item.label)


def _check_semantics(suite: Suite, path: str, data_ctx) -> list[str]:
    errors: list[str] = []
    for key, items in (("datasets", suite.datasets), ("defenses", suite.defenses), ("attacks", suite.attacks),
                       ("detector_attacks", suite.detector_attacks), ("detectors", suite.detectors)):
        _unique_labels(items, key, path, errors)
    if not suite.defenses and not suite.detectors:
        errors.append(f"{path}: defenses: a suite needs at least one defense or detector")

    for i, ds in enumerate(suite.datasets):
        if not _check_entry(datasets, ds, f"datasets[{i}]", path, errors):
            continue
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

    surfaces: dict[str, set[str]] = {}
    loss_surfaces: dict[str, set[str]] = {}
    for i, d in enumerate(suite.defenses):
        defense = _check_entry(defenses, d, f"defenses[{i}]", path, errors)
        if isinstance(defense, DetectorDefense):
            errors.append(f"{path}: defenses[{i}].name: {d.name!r} is a detector; list it under detectors "
                          "(with detector_attacks to build its data)")
        elif defense is not None:
            surfaces[d.label] = set(defense.surface_names())
            loss_surfaces[d.label] = set(defense.loss_surface_names())

    labels = [d.label for d in suite.defenses]
    for i, a in enumerate(suite.attacks):
        key = f"attacks[{i}]"
        attack = _check_entry(attacks, a, key, path, errors)
        if attack is None:
            continue
        _check_budgets(attack, a.budgets, key, path, errors)
        for name in (a.defenses or []):
            if name not in labels:
                errors.append(f"{path}: {key}.defenses: {UnknownName('defense label', name, labels)}")
        if a.transfer_from is not None:
            if a.transfer_from not in labels:
                errors.append(f"{path}: {key}.transfer_from: {UnknownName('defense label', a.transfer_from, labels)}")
            elif a.surface not in surfaces.get(a.transfer_from, {a.surface}):
                errors.append(f"{path}: {key}.surface: {UnknownName('attack surface', a.surface, sorted(surfaces[a.transfer_from]))}")
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
        bound = BUDGET_KINDS["eps"].upper_for(tm)  # the same bound an attack's eps budget has
        if not (math.isfinite(budget) and budget > 0) or (bound is not None and budget > bound.limit):
            limit = f" and at most {bound.limit:g}" if bound is not None else ""
            errors.append(f"{path}: headline.{tm}: the headline eps must be > 0 and finite{limit}, got {budget}")
    _check_detectors(suite, path, errors)
    return errors


def _is_detector(factory) -> bool:
    return isinstance(factory, type) and issubclass(factory, DetectorDefense)


def _check_budgets(attack, budgets: list[float | None], key: str, path: str, errors: list[str]) -> None:
    for j, budget in enumerate(budgets):
        problem = type(attack).budget_error(budget)
        if problem:
            errors.append(f"{path}: {key}.budgets[{j}]: {problem}")


def _check_detectors(suite: Suite, path: str, errors: list[str]) -> None:
    """The detector experiments: detector defenses, the attacks building their data, baselines and
    detector-aware attacks."""
    for i, a in enumerate(suite.detector_attacks):
        attack = _check_entry(attacks, a, f"detector_attacks[{i}]", path, errors)
        if attack is not None:
            _check_budgets(attack, a.budgets, f"detector_attacks[{i}]", path, errors)
    known_attacks = [a.label for a in suite.detector_attacks]
    for i, d in enumerate(suite.detectors):
        key = f"detectors[{i}]"
        if d.name in defenses and not _is_detector(defenses.get(d.name).factory):
            detectors = [e.name for e in defenses.entries() if _is_detector(e.factory)]
            errors.append(f"{path}: {key}.name: {d.name!r} is a defense, not a detector "
                          f"(detectors: {', '.join(detectors)}); list it under defenses")
        else:
            _check_entry(defenses, d, key, path, errors)
        if not known_attacks:
            errors.append(f"{path}: {key}: a detector needs detector_attacks to build its data from")
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
                _check_budgets(attack, a.budgets, where, path, errors)
            for k, weight in enumerate(a.detector_weights):
                if not weight > 0:
                    errors.append(f"{path}: {where}.detector_weights[{k}]: must be > 0, got {weight}")
