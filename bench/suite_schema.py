"""The suite's schema: one pydantic model per entry of a suite file (datasets, defenses, attacks, detectors, the
suite itself), and pydantic's errors turned into one line per problem naming file and key, with close matches
for an unknown key. ``bench.config`` loads a file into these models; ``bench.suite_checks`` checks what the
schema alone cannot.
"""

from __future__ import annotations

import difflib
import typing
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, PrivateAttr
from pydantic_core import PydanticCustomError

from .registry import ACCEPTS_FRACTION, FloatOrFraction, Seed


class _Strict(BaseModel):
    # Floats must be finite, as in every registry entry's parameters (bench.registry); a field that
    # takes NaN or infinity says so: Annotated[float, AllowInfNan()].
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# A budget: a number or a fraction a/b (``bench.registry.parse_fraction``: ``8/255``), read as a float; finite
# is checked with the attack's own words (``Attack.budget_error``: "use null for no bound").
Budget = Annotated[float, AllowInfNan(), ACCEPTS_FRACTION]


def _not_empty(default: str) -> pydantic.AfterValidator:
    """For a list key whose absence means a default such as "all": an empty list is refused (it would
    read as that default, or as nothing), with the way to each meaning."""

    def check(value: list) -> list:
        if not value:
            raise PydanticCustomError("empty_list", "empty list: leave the key out to {default}, or name at least one",
                                      {"default": default})
        return value

    return pydantic.AfterValidator(check)


class DatasetEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    train_size: int | None = Field(None, gt=0, description="random subset of the training split")
    test_size: int | None = Field(None, gt=0, description="random subset of the test split (clean accuracy)")
    eval_size: int = Field(1000, gt=0, description="test examples that are attacked (unset: 1000, or the whole test "
                                                   "split if it is smaller)")
    subset_seed: Seed = 0
    eval_correct_by: str | None = Field(None, description="attack only test images this defense (its label) "
                                                          "classifies correctly, e.g. the transfer attacks' surrogate "
                                                          "(Abbasi et al.: all correctly classified test samples); "
                                                          "every attack gets the same images")
    verify: bool = Field(True, description="check the files against torchvision's MD5 checksums; false accepts a "
                                           "local copy that differs (the structural checks still run, and each "
                                           "result records it)")
    out_distribution: OutDistributionEntry | None = Field(
        None, description="an out-distribution test set scored on every defense (Acc./Rej./Err.)")


class OutDistributionEntry(_Strict):
    """A dataset's out-distribution test set (Abbasi et al. 2018): a registered dataset, optionally without some
    classes, whose test split every defense is scored on; only a rejection is a right answer there."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    exclude_classes: list[str] = Field(default_factory=list, description="class names to drop (for cifar100 also "
                                                                         "superclass names, e.g. vehicles_1)")
    test_size: int | None = Field(None, gt=0, description="random subset of its test split")
    subset_seed: Seed = 0


class DefenseEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class AttackEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    budgets: list[Budget | None] = Field(min_length=1)
    surface: str = "deployed"
    transfer_from: str | None = Field(None, description="craft on this defense's deployed model, score on all")
    defenses: Annotated[list[str], _not_empty("attack every defense")] | None = Field(
        None, description="defense labels to attack; default all")
    evaluate_on: Annotated[list[str], _not_empty("score on each defense's deployed model")] = Field(
        default_factory=lambda: ["deployed"],
        description="surfaces of each defense that score the examples, e.g. member:0")
    eval_size: int | None = Field(None, gt=0, description="attack only the first this many of the dataset's attacked "
                                                          "examples (its seeded order), e.g. C&W on 100 images")


class CertificateEntry(_Strict):
    """A certificate method (``advbench list certifiers``): per example, a certified lower bound of robust accuracy
    on each defense it can certify, at every budget (bench/certify)."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    threat_model: Literal["linf", "l2"] | None = Field(
        None, description="the norm certified; default the method's first (ibp, deepz: linf; smoothing: l2)")
    budgets: list[FloatOrFraction] | None = Field(
        None, description="eps budgets to certify; default every eps budget the suite's attacks on the defense run "
                          "at in this threat model (so each certificate sits beside its best-known number)")
    defenses: Annotated[list[str], _not_empty("certify every defense the method applies to")] | None = Field(
        None, description="defense labels to certify; default every defense the method applies to")
    eval_size: int | None = Field(None, gt=0, description="certify only the first this many of the dataset's "
                                                          "attacked examples (its seeded order)")


class DetectorAttackEntry(_Strict):
    """An attack that builds detector data: its budgets are the ladder of the per-image minimal-budget
    search (smallest first; ``null`` = unbounded, the attack's own minimal search, tried last)."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    budgets: list[Budget | None] = Field(min_length=1)


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
    budgets: list[Budget | None] = Field(min_length=1)
    detector_weights: list[FloatOrFraction] = Field(
        default_factory=lambda: [0.1, 0.3, 1.0], min_length=1,
        description="weights of the detector's term in a gradient attack's loss, tried in turn; each image "
                    "keeps the first example that gets through (C&W ignores them: its own search balances)")


class DetectorEntry(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    images: int = Field(2000, ge=20, description="training-split images per attack (paper: 10,000)")
    folds: int = Field(10, ge=2, description="cross-validation folds (paper: 10)")
    fpr: Annotated[float, Field(gt=0, lt=1), ACCEPTS_FRACTION] = Field(
        0.05, description="false-positive rate of the TPR-at-FPR threshold")
    train_attacks: Annotated[list[str], _not_empty("train on every detector attack")] | None = Field(
        None, description="labels of detector_attacks; default all")
    test_attacks: Annotated[list[str], _not_empty("test on the train_attacks")] | None = Field(
        None, description="labels of detector_attacks; default train_attacks")
    baselines: list[BaselineEntry] = Field(default_factory=list)
    adaptive_attacks: list[AdaptiveAttackEntry] = Field(default_factory=list)
    adaptive_threshold: Literal["fpr", "classifier"] = Field(
        "fpr", description="the guarded classifier's operating point: flag a fraction `fpr` of clean held-out "
                           "test images, or the binary classifier's own decision")


class Suite(_Strict):
    name: str
    description: str = ""
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: int = Field(256, gt=0, description="attack and evaluation batch size")
    numerics: Literal["native", "portable"] = Field(
        "native", description="portable: CPU kernels pinned to AVX2 so any x86-64 machine computes the same "
                              "numbers (bench/numerics.py); native: the fastest kernels for this CPU")
    datasets: list[DatasetEntry] = Field(min_length=1)
    defenses: list[DefenseEntry] = Field(default_factory=list)
    attacks: list[AttackEntry] = Field(default_factory=list)
    detector_attacks: list[DetectorAttackEntry] = Field(default_factory=list)
    detectors: list[DetectorEntry] = Field(default_factory=list)
    certificates: list[CertificateEntry] = Field(default_factory=list)
    repeats: int | None = Field(
        None, ge=1, le=1000, description="predictions per scored example for a stochastic defense (fresh "
                                         "randomness each); default 10 for stochastic defenses, 1 otherwise")
    headline: dict[str, FloatOrFraction] = Field(
        default_factory=dict, description="per threat model (linf, l2, ...), the eps budget of the leaderboard's "
                                          "headline; default: the largest budget every attack of a table ran at")
    checks: bool = Field(True, description="soundness checks (bench.checks): a few cheap extra tasks per attacked "
                                           "defense and threat model, and a flag on every row that fails one")
    path: str = Field("", exclude=True)
    # What validation found wasteful but not wrong, one line each naming file and key (printed on stderr).
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)


def key_path(loc: tuple) -> str:
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


def schema_errors(path: str, prefix: str, err: pydantic.ValidationError | list[dict], *,
                     schema: type[BaseModel] | None = None, known: list[str] | None = None) -> list[str]:
    """One message per problem (``err``: a pydantic error, or some of its ``errors()``). An unknown key gets
    close matches among the keys that are allowed there: ``known`` (a registry entry's parameters) or the
    fields of ``schema`` at that place."""
    msgs = []
    for e in (err.errors() if isinstance(err, pydantic.ValidationError) else err):
        loc = tuple(p for p in e["loc"] if p != "__root__")
        key = key_path(loc)
        full = ".".join(k for k in (prefix, key) if k).replace(".[", "[")
        msg = e["msg"]
        if e["type"] == "finite_number":
            msg += f", got {e['input']}"
        elif e["type"] == "extra_forbidden":
            model = _model_at(schema, loc) if schema is not None else None
            allowed = known if known is not None else (list(model.model_fields) if model else [])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=3, cutoff=0.6) if loc else []
            msg = "unknown key" + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else
                                   f" (allowed: {', '.join(allowed)})" if allowed else "")
        msgs.append(f"{path}: {full}: {msg}" if full else f"{path}: {msg}")
    return msgs
