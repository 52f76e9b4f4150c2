"""Name -> factory registries for datasets, architectures, defenses and attacks.

Modelled on timm's ``register_model`` and lm-evaluation-harness's registry:

* a factory is registered under a name with a decorator;
* its keyword-only parameters (with type annotations and defaults) are the
  parameters a suite may set; positional parameters are supplied by the harness
  (a dataset's input shape, a data directory, ...);
* an unknown name fails with close-match suggestions;
* third-party packages register through entry-point groups
  (``advbench.datasets``, ``advbench.architectures``, ``advbench.defenses``,
  ``advbench.attacks``, ``advbench.baseline_detectors``, ``advbench.classifiers``, ``advbench.views``,
  ``advbench.executors``, ``advbench.task_steps``) without editing this repository. An entry point may
  name a module (importing it registers its entries) or a factory (registered
  under the entry point's name).

What ``Entry.validate`` checks beyond each annotation's type, for every registry alike:

* **floats are finite**: a ``float`` parameter (alone, in a list, ``float | None``, ...) refuses NaN and
  ±infinity (pydantic's ``allow_inf_nan=False``), so ``lr: .nan`` or ``std: .inf`` fails validation, not
  training. A parameter that means to take them opts out in its annotation with pydantic's own marker,
  ``Annotated[float, pydantic.AllowInfNan()]`` (the suite schema's budgets do, to say more than pydantic).
* **seeds are in range**: a parameter named ``seed`` or ``*_seed`` annotated ``int`` is a ``Seed``:
  0 <= seed < 2**32, what numpy's legacy seeding and scikit-learn's ``random_state`` accept (numpy's
  ``default_rng`` and torch take more). The suite's own ``seeds`` and ``subset_seed`` use the same type.
* **counts that scale the cost are bounded**: an ``int`` parameter whose name says it multiplies the work
  (``epochs``, ``steps``, ``restarts``, ``queries``, ``repeats``, ``members``, ``eot``, ... : ``COST_LIMITS``)
  is at most a limit no real suite reaches, so ``epochs: 1000000000`` fails validation instead of running
  until killed. A parameter declares its own limit (or, with ``CostLimit(None)``, none) in its annotation:
  ``Annotated[int, CostLimit(500, "why")]``; a name the table lacks is bounded only so.
* **floats take fractions**: a ``float`` parameter (alone, in a list, optional, ...) also takes a string
  ``a/b`` of two numbers, such as ``2/255``, read as the float a / b (``parse_fraction``); the suite
  file keeps the user's form, the validated parameters (and the task keys) hold the float. The suite
  schema's budgets take them the same way.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Annotated, Any, Callable

import pydantic
from pydantic_core import PydanticCustomError, core_schema


SEED_LIMIT = 2**32  # seeds are 0 <= seed < SEED_LIMIT: numpy's np.random.seed and scikit-learn's random_state


def _seed_in_range(value: int) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise PydanticCustomError(
            "seed_range", "a seed must be from 0 to 2**32 - 1 = {limit} (what numpy and scikit-learn accept), "
                          "got {value}", {"limit": SEED_LIMIT - 1, "value": value})
    return value


# A seed: an int that every random generator the harness seeds accepts (the module docstring).
Seed = Annotated[int, pydantic.AfterValidator(_seed_in_range)]


def _is_seed(param: Param) -> bool:
    return param.annotation is int and (param.name == "seed" or param.name.endswith("_seed"))


# --------------------------------------------------------------------------- counts that scale the cost


@dataclass(frozen=True)
class CostLimit:
    """An upper bound on an ``int`` that multiplies a task's work, as pydantic metadata:
    ``Annotated[int, CostLimit(10_000, "why")]``. ``limit`` None: no bound (a parameter named like a cost
    in ``COST_LIMITS`` opts out so). The bound is a guard against a slip of the keyboard, not a policy: it
    sits far above what any real suite runs, which ``why`` says."""

    limit: int | None
    why: str = ""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        schema = handler(source)
        if self.limit is None:
            return schema
        return core_schema.no_info_after_validator_function(self._check, schema)

    def _check(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value > self.limit:
            raise PydanticCustomError(
                "cost_limit", "{value} exceeds the limit of {limit} ({why}), a bound against a typo that would "
                              "run until killed",
                {"value": value, "limit": f"{self.limit:,}", "why": self.why})
        return value


# The bounds of the parameters that scale a task's cost, by name: an exact parameter name, else the last
# word of a name (``feature_epochs`` -> ``epochs``, ``max_iter`` -> ``iter``). Each limit is one to two
# orders of magnitude above the largest setting in the literature the harness reproduces and in the
# shipped suites (in brackets), so no real experiment meets it, and a mistyped value (an extra 000) or
# a units slip still fails validation instead of occupying a machine for days.
_ITERATIONS = CostLimit(100_000, "C&W's paper runs 10,000 iterations, AutoAttack 100; the suites here at most 1,000")
_DRAWS = CostLimit(10_000, "EOT in the literature averages tens to 1,000 draws; the suites here at most 20")
_CLASS_COUNT = CostLimit(1_000, "one per class, and ImageNet has 1,000 classes")
COST_LIMITS: dict[str, CostLimit] = {
    # whole names
    "binary_search_steps": CostLimit(1_000, "each is a whole attack; C&W's paper runs 9 to 20"),
    "members": CostLimit(1_000, "ensembles in the literature have at most tens of members; the suites here 10"),
    "ensemble_size": CostLimit(10_000, "RSE's paper averages 50 noisy passes"),
    "sub_models": CostLimit(1_000, "random layer sampling's paper uses 2 to 4 sub-models"),
    "train_samples": _DRAWS,
    "test_samples": _DRAWS,
    "eot": _DRAWS,
    "target_classes": _CLASS_COUNT,
    "candidates": _CLASS_COUNT,
    # last words
    "epochs": CostLimit(10_000, "the longest published schedules train a few hundred epochs; the suites here "
                                "at most 150"),
    "steps": _ITERATIONS,
    "iter": _ITERATIONS,
    "iterations": _ITERATIONS,
    "restarts": CostLimit(1_000, "AutoAttack runs 1 to 5 restarts"),
    "queries": CostLimit(1_000_000, "Square runs 5,000 to 10,000 queries, black-box papers up to 100,000"),
    "repeats": CostLimit(100_000, "noise attacks draw 100 to 1,000 times per image"),
    "draws": _DRAWS,
}


def cost_limit(name: str) -> CostLimit | None:
    """The ``COST_LIMITS`` entry of a parameter called ``name``, or None."""
    return COST_LIMITS.get(name) or COST_LIMITS.get(name.rsplit("_", 1)[-1])


def _bounded_ints(annotation: Any, limit: CostLimit) -> Any:
    """``annotation`` with its ``int`` (alone or as a member of a union: ``int | None``,
    ``int | list[...]``) bounded by ``limit``; a parameter that declares its own ``Annotated`` int keeps it.
    A union is bounded as a whole (the check passes whatever is not an int), so a value beyond the limit is
    one error at the parameter, not one per member of the union."""
    if annotation is int or (typing.get_origin(annotation) in (typing.Union, types.UnionType)
                             and int in typing.get_args(annotation)):
        return Annotated[annotation, limit]
    return annotation


# --------------------------------------------------------------------------- fractions for floats


_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_FRACTION = re.compile(rf"\s*({_NUMBER})\s*/\s*({_NUMBER})\s*")


def parse_fraction(value: Any) -> Any:
    """A string ``a/b`` of two numbers (``8/255``, ``1/2.5``) as the float a / b; anything else unchanged
    (a pydantic float field then judges it). Raises a pydantic error for a malformed fraction or b = 0,
    so a suite's message names the key."""
    if not isinstance(value, str) or "/" not in value:
        return value
    match = _FRACTION.fullmatch(value)
    if match is None:
        raise PydanticCustomError("fraction", "{input} is not a number or a fraction a/b of two numbers "
                                              "(such as 8/255)", {"input": repr(value)})
    numerator, denominator = float(match[1]), float(match[2])
    if denominator == 0:
        raise PydanticCustomError("fraction", "the fraction {input} divides by zero", {"input": value.strip()})
    return numerator / denominator


# The marker that makes a float take a fraction: last in an ``Annotated``, after the constraints on the float
# (``Annotated[float, AllowInfNan(), ACCEPTS_FRACTION]``), which pydantic applies to the number it returns.
ACCEPTS_FRACTION = pydantic.BeforeValidator(parse_fraction)
# A float that may be written as a fraction a/b (the suite schema's budgets and other floats).
FloatOrFraction = Annotated[float, ACCEPTS_FRACTION]


def _with_fractions(annotation: Any) -> Any:
    """``annotation`` with every ``float`` in it (alone, in a union, a list, a dict's values, under
    ``Annotated``) taking a fraction ``a/b`` too (``parse_fraction``)."""
    if annotation is float:
        return FloatOrFraction
    origin = typing.get_origin(annotation)
    if origin is None or origin is typing.Literal:
        return annotation
    args = typing.get_args(annotation)
    if origin is Annotated:
        if args[0] is float:  # after its constraints (AllowInfNan, ...): they judge the number
            return annotation if ACCEPTS_FRACTION in args[1:] else Annotated[(float, *args[1:], ACCEPTS_FRACTION)]
        inner = _with_fractions(args[0])
        return annotation if inner is args[0] else Annotated[(inner, *args[1:])]
    new = tuple(a if a is Ellipsis else _with_fractions(a) for a in args)
    if all(a is b for a, b in zip(new, args)):
        return annotation
    if origin in (typing.Union, types.UnionType):
        return typing.Union[new]
    if origin in (list, set, frozenset, tuple, dict):
        return origin[new] if len(new) > 1 else origin[new[0]]
    return annotation


def field_type(param: Param) -> Any:
    """The type pydantic validates a parameter with: its annotation, with the rules of the module docstring
    (seeds in range, cost counts bounded, fractions for floats; finite floats are the model's config)."""
    if _is_seed(param):
        return Seed
    annotation = param.annotation
    limit = cost_limit(param.name)
    if limit is not None:
        annotation = _bounded_ints(annotation, limit)
    return _with_fractions(annotation)


# --------------------------------------------------------------------------- names of other registries


def registry_name(registry: Registry) -> Any:
    """A ``str`` parameter that names an entry of ``registry`` (a detector's ``classifier``): validated by
    looking the name up, with close matches, and importing nothing the name says (a name that looks like an
    import path is told how a package registers one)."""

    def check(name: str) -> str:
        try:
            registry.get(name)
        except UnknownName as e:
            message = str(e)
            if not isinstance(e, BrokenPlugin) and ("." in name or ":" in name):
                message += (f" (a {registry.kind} is a registered name, not an import path: a package registers "
                            f"its own through the {registry.group} entry-point group)")
            raise PydanticCustomError("unknown_name", "{message}", {"message": message}) from None
        return name

    return Annotated[str, pydantic.AfterValidator(check)]


class UnknownName(KeyError):
    """A name that is not registered; the message carries close matches."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(known)}"
        super().__init__(f"unknown {kind} {name!r}; {hint}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class BrokenPlugin(UnknownName):
    """A name whose entry point failed to import: the message names the entry point and its error."""

    def __init__(self, kind: str, name: str, where: str, error: str):
        KeyError.__init__(self, f"{kind} {name!r} comes from the entry point {where}, which failed to import: "
                                f"{error}")
        self.kind, self.name, self.known = kind, name, []


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    default: Any  # inspect.Parameter.empty when required

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        # Plain classes by name (float); typing constructs in full (Literal['adam', 'sgd'], float | None);
        # Annotated[float, ...] as its type (float).
        annotation = self.annotation
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        plain = isinstance(annotation, type) and typing.get_origin(annotation) is None
        type_name = annotation.__name__ if plain else str(annotation).replace("typing.", "")
        return f"{self.name}: {type_name}" + ("" if self.required else f" = {self.default!r}")


@dataclass
class Entry:
    """One registered factory."""

    kind: str
    name: str
    factory: Callable[..., Any]
    version: str = "1"  # bump when the factory's output changes: part of task keys
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> list[Param]:
        if not inspect.isclass(self.factory):
            return _keyword_params(self.factory)[0]
        # A subclass's __init__(self, *, own, **rest) passes `rest` on to its parent:
        # collect keyword-only parameters along the MRO until one takes no **kwargs.
        params: dict[str, Param] = {}
        for cls in self.factory.__mro__:
            if "__init__" not in vars(cls) or cls is object:
                continue
            own, forwards = _keyword_params(cls.__init__)
            for p in own:
                params.setdefault(p.name, p)
            if not forwards:
                break
        return list(params.values())

    def validate(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Check names and types of user parameters; return them with defaults filled in.

        Floats must be finite (and may be fractions a/b), seeds in range, counts that scale the cost
        bounded (the module docstring says how a parameter opts out).
        Raises ``pydantic.ValidationError``; the suite loader turns it into a
        message naming file and key.
        """
        fields = {p.name: (field_type(p), ... if p.required else p.default) for p in self.params}
        model = pydantic.create_model(
            f"{self.kind} {self.name!r}",  # its errors' title: "1 validation error for architecture 'resnet18'"
            __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False),
            **fields,
        )
        return model(**(params or {})).model_dump()

    def build(self, *context: Any, **params: Any) -> Any:
        return self.factory(*context, **self.validate(params))


def _keyword_params(fn: Callable) -> tuple[list[Param], bool]:
    """Keyword-only parameters of fn, and whether it also takes **kwargs."""
    hints = _type_hints(fn)
    sig = inspect.signature(fn).parameters.values()
    params = [Param(p.name, hints.get(p.name, Any), p.default) for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig)


def _type_hints(obj: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)  # keeps Annotated[...]'s markers (AllowInfNan)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return {k: v for k, v in getattr(obj, "__annotations__", {}).items() if not isinstance(v, str)}


class Registry:
    """Entries of one kind, filled from built-in modules and entry-point plugins on first use."""

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self.group = group
        self._builtin_modules = builtin_modules
        self._entries: dict[str, Entry] = {}
        self._broken: dict[str, tuple[str, str]] = {}  # entry-point name -> (where, error)
        self._loaded = False

    def register(
        self, name: str | None = None, *, version: str = "1", description: str | None = None, **meta: Any
    ) -> Callable[[Callable], Callable]:
        """Decorator: ``@defenses.register("gaussian-augment")``."""

        def decorator(factory: Callable) -> Callable:
            self.add(name or factory.__name__.replace("_", "-"), factory, version=version,
                     description=description, **meta)
            return factory

        return decorator

    def add(self, name: str, factory: Callable, *, version: str = "1", description: str | None = None,
            **meta: Any) -> Entry:
        if name in self._entries and self._entries[name].factory is not factory:
            raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name].factory!r}")
        doc = description if description is not None else inspect.getdoc(factory) or ""
        entry = Entry(self.kind, name, factory, version, doc.split("\n\n")[0].replace("\n", " "), meta)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            if name in self._broken:
                raise BrokenPlugin(self.kind, name, *self._broken[name]) from None
            raise UnknownName(self.kind, name, self.names()) from None

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        self.load_plugins()

    def load_plugins(self) -> None:
        """Import every entry point of this registry's group (safe to call again).

        An entry point that fails to import is skipped with one warning line naming it and its error
        (suites that do not use it still validate and run); asking for its name later says why it is
        missing.
        """
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not take the built-in entries down with it
                if ep.name not in self._broken:
                    where, error = f"{ep.name} = {ep.value} (group {self.group})", f"{type(e).__name__}: {e}"
                    self._broken[ep.name] = (where, error)
                    print(f"advbench: warning: skipped the entry point {where}: {error}", file=sys.stderr)
                continue
            if isinstance(obj, types.ModuleType):
                continue  # importing the module registered its entries
            if ep.name not in self._entries:
                self.add(ep.name, obj)


datasets = Registry("dataset", "advbench.datasets", ("bench.data",))
architectures = Registry("architecture", "advbench.architectures", ("bench.models",))
defenses = Registry("defense", "advbench.defenses", ("defenses",))
attacks = Registry("attack", "advbench.attacks", ("bench.attacks",))
# Detectors compared with a detector defense on its own detector data; built as factory(model, **params).
baseline_detectors = Registry("baseline detector", "advbench.baseline_detectors", ("bench.detection.baselines",))
# The binary classifiers a detector trains on its features (a detector's ``classifier`` parameter names one):
# factory(**params) -> an unfitted estimator with fit and predict, built by
# ``bench.detection.classifiers.make_classifier``. The built-ins import scikit-learn only when built.
classifiers = Registry("classifier", "advbench.classifiers", ("bench.detection.classifiers",))
ClassifierName = registry_name(classifiers)  # a parameter naming one (``defenses/bimodel_detector.py``)
# The harness's own parts, pluggable the same way (docs/architecture.md):
# what a task of each kind does (meta: the store table its rows go to; version: part of its task keys),
task_steps = Registry("task kind", "advbench.task_steps", ("bench.runner.steps", "bench.runner.detector_steps",
                                                            "bench.runner.certify_steps"))
# and what runs a plan's tasks (``advbench run --executor NAME``).
executors = Registry("executor", "advbench.executors", ("bench.runner.local", "bench.runner.pool",
                                                              "bench.runner.ray_executor"))
# Certificate methods (a suite's ``certificates:`` entries name one): lower bounds on robust accuracy.
certifiers = Registry("certificate method", "advbench.certifiers", ("bench.certify.methods",))
views = Registry("view", "advbench.views", ("bench.report.views", "bench.report.randomized_views",
                                           "bench.report.dustbin_views"))

REGISTRIES = {"datasets": datasets, "architectures": architectures, "defenses": defenses, "attacks": attacks,
              "baseline-detectors": baseline_detectors, "classifiers": classifiers, "certifiers": certifiers,
              "executors": executors, "views": views}
