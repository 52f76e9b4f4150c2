"""The ``Attack`` base class and what every attack shares: the run contract, contexts, helpers (budget kinds:
bench/attacks/budgets.py; the job of one run: bench/attacks/job.py).

The contract an attack keeps is in ``bench/attacks/__init__.py``; where to add one, in docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
from typing import Any, ClassVar, Iterator, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..registry import attacks
from ..threat_models import ThreatModel
from .budgets import BUDGET_KINDS, BudgetKind, shape_words
from .job import AttackJob, AttackProgress, ProgressSteps, count_classes
from .surface import custom_logits, custom_loss

# The order in which a backend annotation lists the backends (then any others, as the class lists them); it
# is the order pydantic's messages name them in ("Input should be 'foolbox', 'art' or 'torch'").
BACKEND_ORDER = ("foolbox", "art", "torch")

# The cost model's units (``Attack.forward_passes``; bench.runner.cost counts in the same): a forward and backward
# pass through the weights, in forward passes (the backward costs about two), the base class's generic count
# per step; and an attack's gradient step: a forward and a backward to the input only (``attack_context`` turns
# off the parameters' gradients), about one forward each.
FORWARD_BACKWARD = 3
INPUT_GRADIENT = 2

# How parameters commonly name an iteration count: an attack class that declares no ``step_param`` (a plugin
# older than the declaration), or an attack not known here, is read as counting its iterations with the first
# of these its parameters hold as an int (``bench.checks.step_param``).
GUESSED_STEP_PARAMS = ("steps", "max_iter", "n_iter")


# --------------------------------------------------------------------------- base class


class Attack:
    """Base class: subclasses set the class variables and implement ``_run_<backend>``.

    Two declarations tell the harness how an attack iterates and what it costs, so that nothing outside the
    class dispatches on its name:

    * ``step_param`` (class variable, ``str | None``): the name of the parameter that counts its iterations
      (gradient steps, queries, noise draws), None where it has none (FGSM's single step; JSMA, bounded by its
      budget). The soundness checks read it (``bench.checks.step_param``): check 3 runs the suite's iterative
      gradient attack with ``bench.checks.STEPS_FACTOR`` times that count. A class that declares none (a plugin
      older than the declaration) is read by the names in ``GUESSED_STEP_PARAMS``.
    * ``forward_passes(params, budget=None, shape=None)`` (classmethod, -> float): forward passes per attacked
      image with its (defaulted) ``params``, at ``budget`` on images of ``shape`` (C, H, W; None: unknown), in
      the cost model's units: a gradient step counts ``INPUT_GRADIENT``, a query or a noise draw 1; early
      stopping is counted at full length. ``bench.runner.cost.attack_passes`` asks it (the dry run's estimate
      and the run's ETA follow). The base class's is the generic count that serves any attack which declares
      none: its ``steps`` (or ``max_iter``; else ``n_queries``, ``queries``; else 10) x ``restarts`` (or
      ``n_restarts``) x ``eot`` x ``FORWARD_BACKWARD``.
    """

    threat_model: ClassVar[ThreatModel]
    budget_param: ClassVar[str] = "eps"  # a key of BUDGET_KINDS
    unbounded_ok: ClassVar[bool] = False
    # The first is the default. A subclass's ``__init__`` takes ``backend: str | None = None`` (or the class
    # defines none and gets one); __init_subclass__ annotates it Optional[Literal[<these backends>]], which the
    # registry validates suite parameters with.
    backends: ClassVar[tuple[str, ...]]
    # Whether the torch backend ascends the surface's ``attack_loss`` (FGSM/BIM/PGD) rather than a margin
    # of its own on the logits (C&W): only then do a surface's loss settings change the result.
    ascends_attack_loss: ClassVar[bool] = False
    targeted: ClassVar[bool] = False
    # One gradient step (FGSM): the soundness checks (bench.checks, check 4) flag a row where it beats an
    # iterative attack at the same budget, a sign that the iterative attack's gradient is masked.
    single_step: ClassVar[bool] = False
    # Whether the attack reads the surface's gradients; False for score-based black-box attacks (Square), which
    # are therefore the check that a gradient attack's number is not inflated by a masked gradient.
    uses_gradients: ClassVar[bool] = True
    # Parameters that make a run short, for tests and smoke checks (tests/test_attacks.py runs every
    # registered attack's default backend with them); not used by the harness.
    quick_params: ClassVar[dict[str, Any]] = {}
    # The parameter that counts its iterations, None for none (the class docstring). Declared by every built-in
    # family; left undeclared here, so that a class which declares nothing is read by GUESSED_STEP_PARAMS.
    step_param: ClassVar[str | None]

    # Draws of a stochastic defense's randomness each gradient averages over (EOT); only attacks whose
    # __init__ takes ``eot`` (and calls ``_init_eot``) change it.
    eot: int = 1

    def __init__(self, *, backend: str | None = None):
        if backend is None:
            backend = self.backends[0]
        if backend not in self.backends:
            raise ValueError(f"backend {backend!r} is not available for this attack; "
                             f"choose one of {', '.join(self.backends)}")
        self.backend = backend

    def _init_eot(self, eot: int, backend: str | None) -> None:
        """``eot: k``: average every gradient over k draws of the defense's randomness (Expectation over
        Transformation, Athalye et al. 2018), batched in the plain-PyTorch loop; a stochastic defense's
        ``single``/``deployed`` surfaces then draw anew for each of the k copies of each image. Only the torch
        backend can: with k > 1 and no backend named, it is chosen."""
        if eot < 1:
            raise ValueError(f"eot must be >= 1 (draws per gradient), got {eot}")
        if eot > 1:
            if backend is None:
                self.backend = "torch"
            elif backend != "torch":
                raise ValueError(f"eot: {eot} averages gradients inside the plain-PyTorch loop; set backend: torch "
                                 f"(or leave backend out), not {backend!r}")
        self.eot = eot

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "backends" not in vars(cls) and "__init__" not in vars(cls):
            return  # nothing of its own to annotate (a shared intermediate class, or a plain subclass)
        if "__init__" not in vars(cls):
            _add_forwarding_init(cls)
        init = vars(cls)["__init__"]
        if "backend" not in inspect.signature(init).parameters:
            if "backends" in vars(cls):
                raise TypeError(f"{cls.__name__}.__init__ must take the keyword-only parameter "
                                "`backend: str | None = None` (or be left out)")
            return
        if hasattr(cls, "backends"):
            init.__annotations__["backend"] = backend_annotation(cls.backends)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    # -- cost

    @classmethod
    def forward_passes(cls, params: Mapping[str, Any], budget: float | None = None,
                       shape: tuple[int, ...] | None = None) -> float:
        """Forward passes per attacked image with ``params`` (the class docstring); this generic count serves
        an attack that declares none: ``steps`` (or ``max_iter``, ``n_queries``, ``queries``; else 10) x
        restarts x EOT draws x ``FORWARD_BACKWARD``."""
        p = params
        steps = float(p.get("steps") or p.get("max_iter") or 0)
        restarts, eot = float(p.get("restarts") or p.get("n_restarts") or 1), float(p.get("eot") or 1)
        steps = steps or float(p.get("n_queries") or p.get("queries") or 10)
        return steps * restarts * eot * FORWARD_BACKWARD

    # -- budgets

    @classmethod
    def budget_kind(cls) -> BudgetKind:
        """The entry of ``BUDGET_KINDS`` this class names; a name without one gets the common checks only."""
        kind = BUDGET_KINDS.get(cls.budget_param)
        return kind if kind is not None else BudgetKind(cls.budget_param, cls.budget_param)

    @classmethod
    def budget_error(cls, budget: float | None, input_shape: tuple[int, ...] | None = None) -> str | None:
        """A message if ``budget`` is impossible for this attack on images of ``input_shape`` (C, H, W;
        None: unknown, bounded as ``FALLBACK_INPUT_SHAPE``), else None."""
        kind = cls.budget_kind()
        words = kind.words_for(cls.threat_model)
        if budget is None:
            if cls.unbounded_ok:
                return None
            return f"{words} is required: this attack cannot run unbounded (null)"
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
            return f"{words} must be a number, got {budget!r}"
        budget = float(budget)
        if not math.isfinite(budget):
            hint = "; use null for no bound" if cls.unbounded_ok else ""
            return f"{words} must be finite, got {budget}{hint}"
        if budget < 0:
            return f"{words} must not be negative, got {budget}"
        if budget == 0 and kind.zero is not None:
            return kind.zero.format(budget=budget)
        bound = kind.upper_for(cls.threat_model)
        if bound is not None and budget > bound.bound_for(input_shape):
            return bound.message.format(budget=budget, bound=bound.bound_for(input_shape),
                                        inputs=shape_words(input_shape))
        return None

    # -- targets

    def make_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     seed: int) -> torch.Tensor | None:
        """Target classes for a targeted attack (CPU int64, never equal to ``y``); None if untargeted."""
        return None

    # -- running

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: float | None, *,
            targets: torch.Tensor | None = None, batch_size: int = 256,
            device: str | torch.device = "cpu", seed: int = 0,
            progress: AttackProgress | None = None) -> torch.Tensor:
        """Adversarial examples for ``x`` (labels ``y``) within ``budget``; same shape, CPU, in [0, 1].

        ``progress`` (optional) hears of the run's steps: a callback ``fn(done, total)`` called after each
        one, or a tqdm-like object (``update(n)``; its ``total`` is set). A step is one batch of
        ``job.batches()``; a backend that hands the whole set to a library at once is one step, reported
        when it returns. It never changes the result.
        """
        steps = None if progress is None else ProgressSteps(progress)
        out = self._run(model, x, y, budget, targets, batch_size, device, seed, steps)
        if steps is not None:
            steps.finish()
        return out

    def run_budgets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: Sequence[float | None], *,
                    seeds: Sequence[int], targets: Sequence[torch.Tensor | None], batch_size: int = 256,
                    device: str | torch.device = "cpu") -> list[torch.Tensor]:
        """For each budget i, what ``run(model, x, y, budgets[i], targets=targets[i], batch_size=batch_size,
        device=device, seed=seeds[i])`` returns, with the same checks.

        Where ``fuses_budgets``, the budgets run as one job: batch k of every budget goes through the model
        together, each example with its own budget and each budget's randomness drawn from its own seed as
        alone, so on a deterministic surface the results are bit-identical to the runs one by one on CPU (the
        torch loss is summed per batch, so an example's input gradient does not depend on its batch mates; a
        batch whose row count could change MKL's arithmetic runs alone: ``backends.FUSED_ROW_BLOCK``;
        tests/test_fused_attacks.py). A batch holds up to ``len(budgets) * batch_size`` examples. A surface that
        draws from torch's global generator (a stochastic defense) is seeded once, with the first seed: its
        draws differ from the separate runs', so a scheduler fuses only deterministic defenses' tasks.
        Elsewhere (the libraries' backends) it is one ``run`` per budget.
        """
        if not len(budgets) == len(seeds) == len(targets):
            raise ValueError(f"got {len(budgets)} budgets, {len(seeds)} seeds and {len(targets)} targets; "
                             "give one seed and one targets entry (or None) per budget")
        if not self.fuses_budgets:
            return [self.run(model, x, y, budget, targets=t, batch_size=batch_size, device=device, seed=seed)
                    for budget, seed, t in zip(budgets, seeds, targets)]
        prepared = [self._job(model, x, y, budget, t, batch_size, device, seed, None)
                    for budget, seed, t in zip(budgets, seeds, targets)]
        jobs = [p for p in prepared if isinstance(p, AttackJob)]
        outs: Iterator[torch.Tensor] = iter(())
        if jobs:
            with attack_context(model, jobs[0].seed):
                outs = iter(getattr(self, f"_run_{self.backend}_budgets")(jobs))
        return [self._finalize(p.x, next(outs), p.budget) if isinstance(p, AttackJob) else p for p in prepared]

    @property
    def fuses_budgets(self) -> bool:
        """Whether ``run_budgets`` runs its budgets as one job: the chosen backend has a fused loop
        (``_run_<backend>_budgets(jobs)``, one result per job), and no EOT (``eot`` > 1 serves stochastic
        defenses, whose draws from the global generator a fused batch cannot repeat)."""
        return self.eot == 1 and callable(getattr(self, f"_run_{self.backend}_budgets", None))

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: float | None,
             targets: torch.Tensor | None, batch_size: int, device: str | torch.device, seed: int,
             steps: ProgressSteps | None) -> torch.Tensor:
        job = self._job(model, x, y, budget, targets, batch_size, device, seed, steps)
        if not isinstance(job, AttackJob):
            return job
        with attack_context(model, seed):
            out = getattr(self, f"_run_{self.backend}")(job)
        return self._finalize(job.x, out, job.budget)

    def _job(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: float | None,
             targets: torch.Tensor | None, batch_size: int, device: str | torch.device, seed: int,
             steps: ProgressSteps | None) -> AttackJob | torch.Tensor:
        """The checked job of one run, or its result where nothing needs running (no images; a distance
        budget of 0). ValueError for impossible inputs."""
        problem = self.budget_error(budget, tuple(x.shape[1:]) if getattr(x, "ndim", 0) >= 2 else None)
        if problem:
            raise ValueError(problem)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = check_images(x)
        y = torch.as_tensor(y).detach().to("cpu", torch.long).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"got {len(x)} images but {len(y)} labels")
        if len(x) == 0:
            return x.clone()
        budget = None if budget is None else float(budget)
        device = torch.device(device)
        if self.targeted and targets is None:
            targets = self.make_targets(model, x, y, seed=seed)
        if targets is not None:
            targets = torch.as_tensor(targets).detach().to("cpu", torch.long).reshape(-1)
            if len(targets) != len(x):
                raise ValueError(f"got {len(x)} images but {len(targets)} targets")
        if self.budget_kind().distance_bound and budget == 0:
            return x.clone()  # nothing may change; libraries reject or mishandle eps = 0
        custom = custom_loss(model) is not None or custom_logits(model) is not None
        if custom and self.backend != "torch":
            raise ValueError(f"this attack surface defines its own loss, which only the plain PyTorch backend "
                             f"uses; {type(self).__name__} runs on {self.backend}"
                             + ("; set backend: torch" if "torch" in self.backends else ""))
        if custom_logits(model) is not None and targets is not None and not getattr(self, "_targets_on_forward", False):
            # attack_logits count the true class's rival (e.g. "rejected") as correct: an untargeted objective.
            raise ValueError(f"this attack surface's attack_logits are untargeted; {type(self).__name__} "
                             "cannot run targeted on it")
        return AttackJob(model, x, y, targets, budget, batch_size, device, seed, eot=self.eot, progress=steps)

    def _finalize(self, x: torch.Tensor, out: torch.Tensor, budget: float | None) -> torch.Tensor:
        out = out.detach().to("cpu", torch.float32).reshape(x.shape)
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bad.any():  # a library diverged on some examples: hand them back unperturbed
            out[bad] = x[bad]
        if self.budget_kind().distance_bound and budget is not None:
            norm = "linf" if self.threat_model == "linf" else "l2"
            out = project(out, x, budget, norm)
        return out.clamp_(0.0, 1.0).contiguous()


def backend_annotation(backends: tuple[str, ...]) -> Any:
    """``Optional[Literal[...]]`` of ``backends``, listed in ``BACKEND_ORDER`` (then the others)."""
    ordered = [b for b in BACKEND_ORDER if b in backends] + [b for b in backends if b not in BACKEND_ORDER]
    return Optional[Literal[tuple(ordered)]]


def _add_forwarding_init(cls: type) -> None:
    """Give ``cls`` an ``__init__(self, *, backend=None, **params)`` passing everything on to its parent's."""

    def __init__(self, *, backend: str | None = None, **params: Any) -> None:
        super(cls, self).__init__(backend=backend, **params)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__.__annotations__ = {"backend": "str | None", "params": Any, "return": None}
    cls.__init__ = __init__


def get_attack(name: str, params: dict[str, Any] | None = None) -> Attack:
    """Build a registered attack, validating ``params`` (pydantic types, then ranges)."""
    return attacks.get(name).build(**(params or {}))


# --------------------------------------------------------------------------- helpers


def check_images(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float32 CPU batch in [0, 1]; ValueError if it is not a batch or out of range."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.ndim < 2:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if len(x) and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"images must be in [0, 1], got values in [{x.min().item():.4g}, {x.max().item():.4g}]")
    return x.clamp(0.0, 1.0)  # absorbs rounding; the libraries assert the bounds exactly


def count_of(params: Mapping[str, Any], name: str, default: float = 0.0) -> float:
    """``params[name]`` as a float for a cost formula (``Attack.forward_passes``); ``default`` where it is
    missing, None or 0."""
    return float(params.get(name) or default)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """ValueError unless ``value`` is finite and > 0 (``allow_zero``: >= 0); for ``__init__`` range checks."""
    if not (value > 0 or (allow_zero and value == 0)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def per_example(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-example vector reshaped to broadcast over a batch with ``ndim`` dimensions."""
    return v.reshape(-1, *([1] * (ndim - 1)))


def project(x_adv: torch.Tensor, x0: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x0``, per example; ``eps`` a number
    or a per-example (N,) tensor (a fused run's budgets), which gives each example what its own number would."""
    delta = x_adv - x0
    per_row = isinstance(eps, torch.Tensor)
    if norm == "linf":
        if per_row:
            bound = per_example(eps, delta.ndim)
            delta = torch.minimum(torch.maximum(delta, -bound), bound)  # clamp's order: max with -eps, then min
        else:
            delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1)
        # number / tensor is reciprocal(tensor) * number in torch: the same expression for a tensor eps
        factor = torch.where(norms > eps, norms.clamp_min(1e-12).reciprocal() * eps, torch.ones_like(norms))
        delta = delta * per_example(factor, delta.ndim)
    return x0 + delta


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own train/eval flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def attack_context(model: nn.Module, seed: int) -> Iterator[None]:
    """Seed the global torch/numpy generators in a fork; freeze and eval the model; restore all after."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    np_state = np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices), eval_mode(model):
        try:
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            for p, _ in grads:
                p.requires_grad_(False)  # gradients flow to the input only; nothing accumulates in .grad
            yield
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)
            np.random.set_state(np_state)


def random_targets(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Uniformly random classes different from ``y`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, num_classes, (len(y),), generator=g)
    return (y + offset) % num_classes


def make_targets(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """Target classes by ``mode``: ``random`` (seeded), ``next`` ((y + 1) mod classes) or ``least-likely``."""
    x = check_images(x)
    y = torch.as_tensor(y).to("cpu", torch.long).reshape(-1)
    device = model_device(model)
    if mode == "least-likely":
        with eval_mode(model):
            logits = _predict(model, x, device)
        logits[torch.arange(len(y)), y] = math.inf  # never the true class
        return logits.argmin(dim=1)
    num_classes = count_classes(model, x, device)
    if num_classes < 2:
        raise ValueError("a targeted attack needs a model with at least 2 classes")
    if mode == "next":
        return (y + 1) % num_classes
    return random_targets(y, num_classes, seed)
