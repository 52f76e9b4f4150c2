"""Attacks: wrappers around Foolbox, ART and plain PyTorch behind one interface.

Every attack maps a batch of images in [0, 1] (NCHW, float32, on the CPU) and
their labels to adversarial images of the same shape, on the CPU, in [0, 1]::

    attack = get_attack("pgd-linf", {"steps": 20})
    x_adv = attack.run(model, x, y, budget=0.03, device="cuda", seed=0)

* ``threat_model`` says which distance the attack works in, ``budget_param``
  what a budget number means (an ``eps`` distance bound, the C&W/EAD constant
  ``c``, or JSMA's ``gamma``, the largest fraction of features changed), and
  ``unbounded_ok`` whether a budget of ``None`` is allowed (minimization attacks:
  no distance bound).
* ``backends`` lists the implementations; the first is the default, the fastest
  at equal strength when measured (the comment on each class gives the numbers).
  ``torch`` is a plain PyTorch loop, also the reference the tests compare the
  library versions against.
* The keyword-only parameters of each class's ``__init__`` are what a suite may
  set; the registry validates their types with pydantic, ``__init__`` their
  ranges (``ValueError``, which the suite loader reports with file and key).
* Runs are reproducible: the same seed gives the same output. Library randomness
  (torch's and numpy's global generators) is seeded inside a fork and the global
  state is restored afterwards; the model's train/eval flags and its parameters'
  ``requires_grad`` are restored too, and no gradient is left on a parameter.
* Examples an attack fails on come back unperturbed or as the library returns
  them; for an ``eps`` budget the result is always projected onto the budget ball
  (a no-op up to rounding), so the harness may rely on it. The harness scores.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters import to_art, to_foolbox
from .registry import attacks

THREAT_MODELS = ("linf", "l2", "l1", "l0", "corruption")


# --------------------------------------------------------------------------- base class


class Attack:
    """Base class: subclasses set the class variables and implement ``_run_<backend>``."""

    threat_model: ClassVar[str]
    budget_param: ClassVar[str] = "eps"
    unbounded_ok: ClassVar[bool] = False
    backends: ClassVar[tuple[str, ...]]
    # Whether the torch backend ascends the surface's ``attack_loss`` (FGSM/BIM/PGD) rather than a margin
    # of its own on the logits (C&W): only then do a surface's loss settings change the result.
    ascends_attack_loss: ClassVar[bool] = False
    targeted: ClassVar[bool] = False

    def __init__(self, *, backend: str | None = None):
        if backend is None:
            backend = self.backends[0]
        if backend not in self.backends:
            raise ValueError(f"backend {backend!r} is not available for this attack; "
                             f"choose one of {', '.join(self.backends)}")
        self.backend = backend

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    # -- budgets

    @classmethod
    def budget_error(cls, budget: float | None) -> str | None:
        """A message if ``budget`` is impossible for this attack, else None."""
        name = cls.budget_param
        if budget is None:
            if cls.unbounded_ok:
                return None
            return f"{cls._budget_words()} is required: this attack cannot run unbounded (null)"
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
            return f"{cls._budget_words()} must be a number, got {budget!r}"
        budget = float(budget)
        if not math.isfinite(budget):
            hint = "; use null for no bound" if cls.unbounded_ok else ""
            return f"{cls._budget_words()} must be finite, got {budget}{hint}"
        if budget < 0:
            return f"{cls._budget_words()} must not be negative, got {budget}"
        if name == "eps" and cls.threat_model == "linf" and budget > 1:
            return (f"L-infinity eps {budget} exceeds 1, the whole [0, 1] pixel range "
                    "(images are in [0, 1]; did you mean eps/255?)")
        if name == "c" and budget == 0:
            return "the constant c must be > 0 (the search over c scales it by 10 from its start)"
        if name == "gamma" and not 0 < budget <= 1:
            return f"gamma is a fraction of the features and must be in (0, 1], got {budget}"
        return None

    @classmethod
    def _budget_words(cls) -> str:
        return {"eps": f"{cls.threat_model if cls.threat_model != 'corruption' else 'L2'} eps",
                "c": "the constant c", "gamma": "gamma"}.get(cls.budget_param, cls.budget_param)

    # -- targets

    def make_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     seed: int) -> torch.Tensor | None:
        """Target classes for a targeted attack (CPU int64, never equal to ``y``); None if untargeted."""
        return None

    # -- running

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: float | None, *,
            targets: torch.Tensor | None = None, batch_size: int = 256,
            device: str | torch.device = "cpu", seed: int = 0) -> torch.Tensor:
        """Adversarial examples for ``x`` (labels ``y``) within ``budget``; same shape, CPU, in [0, 1]."""
        problem = self.budget_error(budget)
        if problem:
            raise ValueError(problem)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = _check_images(x)
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
        if self.budget_param == "eps" and budget == 0:
            return x.clone()  # nothing may change; libraries reject or mishandle eps = 0
        custom = hasattr(model, "attack_loss") or hasattr(model, "attack_logits")
        if custom and self.backend != "torch":
            raise ValueError(f"this attack surface defines its own loss, which only the plain PyTorch backend "
                             f"uses; {type(self).__name__} runs on {self.backend}"
                             + ("; set backend: torch" if "torch" in self.backends else ""))
        if hasattr(model, "attack_logits") and targets is not None and not getattr(self, "_targets_on_forward", False):
            # attack_logits count the true class's rival (e.g. "rejected") as correct: an untargeted objective.
            raise ValueError(f"this attack surface's attack_logits are untargeted; {type(self).__name__} "
                             "cannot run targeted on it")
        job = _Job(model, x, y, targets, budget, batch_size, device, seed)
        with _attack_context(model, seed):
            out = getattr(self, f"_run_{self.backend}")(job)
        return self._finalize(x, out, budget)

    def _finalize(self, x: torch.Tensor, out: torch.Tensor, budget: float | None) -> torch.Tensor:
        out = out.detach().to("cpu", torch.float32).reshape(x.shape)
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bad.any():  # a library diverged on some examples: hand them back unperturbed
            out[bad] = x[bad]
        if self.budget_param == "eps" and budget is not None:
            norm = "linf" if self.threat_model == "linf" else "l2"
            out = _project(out, x, budget, norm)
        return out.clamp_(0.0, 1.0).contiguous()


def get_attack(name: str, params: dict[str, Any] | None = None) -> Attack:
    """Build a registered attack, validating ``params`` (pydantic types, then ranges)."""
    return attacks.get(name).build(**(params or {}))


# --------------------------------------------------------------------------- helpers


@dataclass
class _Job:
    """One call of ``Attack.run``: inputs on the CPU, batches moved to ``device``."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    targets: torch.Tensor | None
    budget: float | None
    batch_size: int
    device: torch.device
    seed: int
    _num_classes: int | None = field(default=None, repr=False)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for i in range(0, len(self.x), self.batch_size):
            sl = slice(i, i + self.batch_size)
            t = None if self.targets is None else self.targets[sl].to(self.device)
            yield self.x[sl].to(self.device), self.y[sl].to(self.device), t

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = _num_classes(self.model, self.x, self.device)
        return self._num_classes

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)


def _check_images(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.ndim < 2:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if len(x) and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"images must be in [0, 1], got values in [{x.min().item():.4g}, {x.max().item():.4g}]")
    return x.clamp(0.0, 1.0)  # absorbs rounding; the libraries assert the bounds exactly


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def _num_classes(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    return int(model(x[:1].to(device)).shape[-1])


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def _view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))


def _project(x_adv: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x0``, per example."""
    delta = x_adv - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1)
        factor = torch.where(norms > eps, eps / norms.clamp_min(1e-12), torch.ones_like(norms))
        delta = delta * _view(factor, delta.ndim)
    return x0 + delta


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own train/eval flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _attack_context(model: nn.Module, seed: int) -> Iterator[None]:
    """Seed the global torch/numpy generators in a fork; freeze and eval the model; restore all after."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    np_state = np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices), _eval_mode(model):
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


def _random_targets(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Uniformly random classes different from ``y`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, num_classes, (len(y),), generator=g)
    return (y + offset) % num_classes


def _make_targets(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    x = _check_images(x)
    y = torch.as_tensor(y).to("cpu", torch.long).reshape(-1)
    device = _model_device(model)
    if mode == "least-likely":
        with _eval_mode(model):
            logits = _predict(model, x, device)
        logits[torch.arange(len(y)), y] = math.inf  # never the true class
        return logits.argmin(dim=1)
    num_classes = _num_classes(model, x, device)
    if num_classes < 2:
        raise ValueError("a targeted attack needs a model with at least 2 classes")
    if mode == "next":
        return (y + 1) % num_classes
    return _random_targets(y, num_classes, seed)


# --------------------------------------------------------------------------- backends


def _torch_gradient_attack(job: _Job, *, norm: str, eps: float, steps: int, step_size: float,
                           random_start: bool) -> torch.Tensor:
    """Bare PyTorch FGSM / BIM / PGD in L-infinity or L2, untargeted or targeted (``job.targets``).

    Each step moves by ``step_size`` along the sign (L-inf) or the L2-normalized
    gradient of the summed cross-entropy (ascending the true label's loss, or
    descending the target's), projects onto the eps ball and clips to [0, 1].
    A random start draws uniformly from the eps ball (L2: Voelker et al. 2017).
    """
    gen = job.generator()
    sign = -1.0 if job.targets is not None else 1.0
    outs = []
    for x0, y, t in job.batches():
        labels = t if t is not None else y
        if random_start:
            if norm == "linf":
                delta = (torch.rand(x0.shape, generator=gen, device=x0.device) * 2 - 1) * eps
            else:
                n = x0[0].numel()
                r = torch.randn(len(x0), n + 2, generator=gen, device=x0.device)
                r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = r[:, :n].reshape(x0.shape) * eps
            x = (x0 + delta).clamp(0.0, 1.0)
        else:
            x = x0.clone()
        # A surface with its own success notion (attack_logits: a detector folded in) is non-smooth where
        # the detector's decision flips, and the last iterate often lands back on the detected side:
        # keep each image's first iterate that succeeds (untargeted only; targeted runs are refused).
        success_logits = getattr(job.model, "attack_logits", None) if job.targets is None else None
        best, found = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                loss = attack_loss(job.model, x, labels)
                (grad,) = torch.autograd.grad(loss, x)
            x = x.detach()
            if norm == "linf":
                direction = grad.sign()
            else:
                direction = grad / _view(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad.ndim)
            x = _project(x + sign * step_size * direction, x0, eps, norm).clamp(0.0, 1.0)
            if success_logits is not None:
                with torch.no_grad():
                    new = (success_logits(x, labels).argmax(1) != labels) & ~found
                best[new], found = x[new], found | new
        if success_logits is not None:
            x = torch.where(_view(found, x.ndim), best, x)
        outs.append(x.detach().cpu())
    return torch.cat(outs)


def attack_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss a gradient attack ascends, summed over the batch: the surface's own ``attack_loss``
    where it defines one (an ensemble's mean member loss, Grad. 2), else cross-entropy on its
    ``attack_logits(x, labels)`` where it defines those (a detector-guarded classifier, bench.adaptive),
    else cross-entropy on its scores."""
    custom = getattr(model, "attack_loss", None)
    if custom is not None:
        return custom(x, labels)
    logits = getattr(model, "attack_logits", None)
    return F.cross_entropy(logits(x, labels) if logits is not None else model(x), labels, reduction="sum")


def _foolbox_run(job: _Job, attack: Any, epsilon: float | None, *, targeted: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a Foolbox attack batch by batch; return its budget-clipped advs and success flags."""
    import foolbox as fb

    fmodel = to_foolbox(job.model, job.device)
    advs, successes = [], []
    for xb, yb, tb in job.batches():
        if targeted:
            criterion = fb.criteria.TargetedMisclassification(tb)
        else:
            criterion = fb.criteria.Misclassification(yb)
        _, clipped, success = attack(fmodel, xb, criterion, epsilons=epsilon)
        advs.append(clipped.detach().cpu())
        successes.append(success.detach().cpu())
    return torch.cat(advs), torch.cat(successes)


def _foolbox_keep_failures_clean(x: torch.Tensor, adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """Foolbox's C&W and EAD start their best-so-far at an all-zero image: return x where they failed."""
    zero = (adv.flatten(1) == 0).all(dim=1) & (x.flatten(1) != 0).any(dim=1)
    failed = ~success.bool() | zero
    return torch.where(_view(failed, x.ndim), x, adv)


def _art_generate(job: _Job, make: Callable[[Any], Any], labels: torch.Tensor | None) -> torch.Tensor:
    """Build an ART classifier around the model, an attack with ``make(classifier)``, and generate."""
    k = job.num_classes
    classifier = to_art(job.model, tuple(job.x.shape[1:]), k, job.device)
    attack = make(classifier)
    y = None if labels is None else np.eye(k, dtype=np.float32)[labels.numpy()]
    out = attack.generate(job.x.numpy().astype(np.float32), y=y)
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not (value > 0 or (allow_zero and value == 0)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


# --------------------------------------------------------------------------- L-infinity


@attacks.register("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps along the gradient sign."""

    threat_model = "linf"
    # torch 0.048 s, art 0.057 s, foolbox 0.075 s (128 MNIST images, small CNN, 2 CPU cores, best of 5).
    backends = ("torch", "foolbox", "art")
    ascends_attack_loss = True

    def __init__(self, *, backend: Literal["foolbox", "art", "torch"] | None = None):
        super().__init__(backend=backend)

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        return _foolbox_run(job, fb.attacks.LinfFastGradientAttack(random_start=False), job.budget)[0]

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import FastGradientMethod

        return _art_generate(job, lambda c: FastGradientMethod(
            c, norm=np.inf, eps=job.budget, eps_step=job.budget, targeted=False, batch_size=job.batch_size), job.y)

    def _run_torch(self, job: _Job) -> torch.Tensor:
        return _torch_gradient_attack(job, norm="linf", eps=job.budget, steps=1, step_size=job.budget,
                                      random_start=False)


@attacks.register("fgsm-targeted")
class FGSMTargeted(Attack):
    """Targeted FGSM: one eps step down the gradient sign of the target class's loss.

    ``target`` picks each example's target class: ``random`` (uniform over the
    other classes, seeded), ``next`` ((y + 1) mod classes) or ``least-likely``
    (the class the model scores lowest on the clean image; Kurakin et al. 2017).
    """

    threat_model = "linf"
    targeted = True
    # the single gradient step of fgsm (timings there); Foolbox runs it as a 1-step targeted BIM.
    backends = ("torch", "foolbox", "art")
    ascends_attack_loss = True

    def __init__(self, *, backend: Literal["foolbox", "art", "torch"] | None = None,
                 target: Literal["random", "next", "least-likely"] = "random"):
        super().__init__(backend=backend)
        self.target = target

    def make_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> torch.Tensor:
        return _make_targets(self.target, model, x, y, seed)

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        # Foolbox's FGSM class refuses targeted criteria; one BIM step of size eps is the same update.
        attack = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=job.budget, steps=1, random_start=False)
        return _foolbox_run(job, attack, job.budget, targeted=True)[0]

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import FastGradientMethod

        return _art_generate(job, lambda c: FastGradientMethod(
            c, norm=np.inf, eps=job.budget, eps_step=job.budget, targeted=True, batch_size=job.batch_size),
            job.targets)

    def _run_torch(self, job: _Job) -> torch.Tensor:
        return _torch_gradient_attack(job, norm="linf", eps=job.budget, steps=1, step_size=job.budget,
                                      random_start=False)


@attacks.register("bim")
class BIM(Attack):
    """Basic Iterative Method (I-FGSM, Kurakin et al. 2017): repeated FGSM steps, no random start.

    ``step_size`` is the absolute step alpha; None means 2.5 * eps / steps (the
    heuristic of Madry et al.: 0.25 * eps at 10 steps, near Foolbox's 0.2 * eps).
    Strauss et al.'s setting is eps=0.2 with ``steps: 8, step_size: 0.025``.
    """

    threat_model = "linf"
    # torch 0.46 s, foolbox 0.48 s, art 0.57 s (10 steps, 128 MNIST images, small CNN, 2 CPU cores).
    backends = ("torch", "foolbox", "art")
    ascends_attack_loss = True

    def __init__(self, *, backend: Literal["foolbox", "art", "torch"] | None = None,
                 steps: int = 10, step_size: float | None = None):
        super().__init__(backend=backend)
        _check_positive("steps", steps)
        if step_size is not None:
            _check_positive("step_size", step_size)
        self.steps = steps
        self.step_size = step_size

    def _alpha(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=self._alpha(job.budget), steps=self.steps,
                                                     random_start=False)
        return _foolbox_run(job, attack, job.budget)[0]

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import BasicIterativeMethod

        return _art_generate(job, lambda c: BasicIterativeMethod(
            c, eps=job.budget, eps_step=self._alpha(job.budget), max_iter=self.steps, targeted=False,
            batch_size=job.batch_size, verbose=False), job.y)

    def _run_torch(self, job: _Job) -> torch.Tensor:
        return _torch_gradient_attack(job, norm="linf", eps=job.budget, steps=self.steps,
                                      step_size=self._alpha(job.budget), random_start=False)


class _PGD(Attack):
    """Shared by the L-infinity and L2 PGD entries."""

    ascends_attack_loss = True

    _norm: ClassVar[str]

    def _init(self, steps: int, rel_stepsize: float | None, random_start: bool) -> None:
        _check_positive("steps", steps)
        if rel_stepsize is not None:
            _check_positive("rel_stepsize", rel_stepsize)
        self.steps = steps
        # None: 2.5 / steps (Madry et al.'s rule), so the iterate can cross the ball whatever the step count.
        self.rel_stepsize = rel_stepsize if rel_stepsize is not None else 2.5 / steps
        self.random_start = random_start

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        cls = (fb.attacks.LinfProjectedGradientDescentAttack if self._norm == "linf"
               else fb.attacks.L2ProjectedGradientDescentAttack)
        attack = cls(rel_stepsize=self.rel_stepsize, steps=self.steps, random_start=self.random_start)
        return _foolbox_run(job, attack, job.budget)[0]

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        return _art_generate(job, lambda c: ProjectedGradientDescentPyTorch(
            c, norm=np.inf if self._norm == "linf" else 2, eps=job.budget,
            eps_step=self.rel_stepsize * job.budget, max_iter=self.steps, targeted=False,
            num_random_init=1 if self.random_start else 0, batch_size=job.batch_size, verbose=False), job.y)

    def _run_torch(self, job: _Job) -> torch.Tensor:
        return _torch_gradient_attack(job, norm=self._norm, eps=job.budget, steps=self.steps,
                                      step_size=self.rel_stepsize * job.budget, random_start=self.random_start)


@attacks.register("pgd-linf")
class PGDLinf(_PGD):
    """Projected Gradient Descent in L-infinity (Madry et al. 2018), random start, step rel_stepsize * eps.

    ``rel_stepsize`` None means 2.5 / steps; Madry et al.'s MNIST setting (eps 0.3,
    step 0.01, 40 steps) is ``rel_stepsize: 0.0333``.
    """

    threat_model = "linf"
    _norm = "linf"
    # torch 1.81 s, foolbox 1.95 s, art 2.01 s (40 steps, 128 MNIST images, small CNN, 2 CPU cores).
    backends = ("torch", "foolbox", "art")

    def __init__(self, *, backend: Literal["foolbox", "art", "torch"] | None = None,
                 steps: int = 40, rel_stepsize: float | None = None, random_start: bool = True):
        super().__init__(backend=backend)
        self._init(steps, rel_stepsize, random_start)


@attacks.register("pgd-l2")
class PGDL2(_PGD):
    """Projected Gradient Descent in L2, random start in the eps ball, step rel_stepsize * eps (None: 2.5 / steps)."""

    threat_model = "l2"
    # torch 1.98 s, foolbox 2.15 s, art 2.21 s (50 steps, 128 MNIST images, small CNN, 2 CPU cores).
    backends = ("torch", "foolbox", "art")
    _norm = "l2"

    def __init__(self, *, backend: Literal["foolbox", "art", "torch"] | None = None,
                 steps: int = 50, rel_stepsize: float | None = None, random_start: bool = True):
        super().__init__(backend=backend)
        self._init(steps, rel_stepsize, random_start)


# --------------------------------------------------------------------------- L2 / L1 minimization


@attacks.register("deepfool")
class DeepFool(Attack):
    """DeepFool L2 (Moosavi-Dezfooli et al. 2016): linearize to the nearest boundary, step over it.

    A minimization attack: budget None leaves the distance unbounded; an eps
    budget scales each perturbation down to L2 norm eps. ``overshoot`` is the
    relative step past the boundary, ``candidates`` the top classes considered.
    """

    threat_model = "l2"
    unbounded_ok = True
    # foolbox 19 ex/s vs art 3.7 ex/s (strauss-mnist, 50 steps, 2 CPU cores); both fool all, median L2 1.84 vs 1.87.
    backends = ("foolbox", "art")

    def __init__(self, *, backend: Literal["foolbox", "art"] | None = None,
                 steps: int = 50, overshoot: float = 0.02, candidates: int = 10):
        super().__init__(backend=backend)
        _check_positive("steps", steps)
        _check_positive("overshoot", overshoot, allow_zero=True)
        if candidates < 2:
            raise ValueError(f"candidates must be >= 2 (the predicted class and at least one other), got {candidates}")
        self.steps = steps
        self.overshoot = overshoot
        self.candidates = candidates

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.L2DeepFoolAttack(steps=self.steps, candidates=self.candidates, overshoot=self.overshoot)
        return _foolbox_run(job, attack, job.budget)[0]

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import DeepFool as ArtDeepFool

        return _art_generate(job, lambda c: ArtDeepFool(
            c, max_iter=self.steps, epsilon=self.overshoot, nb_grads=min(self.candidates, job.num_classes),
            batch_size=job.batch_size, verbose=False), None)


class _CWLike(Attack):
    """Common parameter checks of C&W and EAD (budget: the initial constant c)."""

    budget_param = "c"

    def _init(self, confidence: float, steps: int, learning_rate: float, binary_search_steps: int,
              abort_early: bool) -> None:
        _check_positive("confidence", confidence, allow_zero=True)
        _check_positive("steps", steps)
        _check_positive("learning_rate", learning_rate)
        _check_positive("binary_search_steps", binary_search_steps)
        self.confidence = confidence
        self.steps = steps
        self.learning_rate = learning_rate
        self.binary_search_steps = binary_search_steps
        self.abort_early = abort_early


def _torch_carlini_wagner_l2(job: _Job, *, confidence: float, steps: int, learning_rate: float,
                             binary_search_steps: int, abort_early: bool) -> torch.Tensor:
    """Bare PyTorch C&W L2, step for step Foolbox 3's ``L2CarliniWagnerAttack`` (initial constant: the budget).

    It exists because neither Foolbox's nor ART's C&W accepts a custom objective, which the detector-aware
    attack needs: the untargeted margin is taken on the surface's ``attack_logits(x, labels)`` where it has
    them (bench.adaptive), else on ``model(x)``; targeted runs (``job.targets``) use ``model(x)``. Per
    example the smallest-L2 adversarial over all steps and constants is kept; examples never fooled come
    back unperturbed (Foolbox returns zeros there).
    """
    custom = getattr(job.model, "attack_logits", None)
    b1, b2 = 0.9, 0.999  # Adam's betas, as Foolbox's AdamOptimizer
    outs = []
    for x0, y, t in job.batches():
        n, targeted = len(x0), t is not None
        labels = t if targeted else y
        rows = torch.arange(n, device=x0.device)

        def scores(x: torch.Tensor) -> torch.Tensor:
            return job.model(x) if targeted or custom is None else custom(x, y)

        def to_model(w: torch.Tensor) -> torch.Tensor:
            return (torch.tanh(w) + 1) / 2  # tanh space -> (0, 1)

        w0 = torch.atanh((x0 * 2 - 1) * 0.999999)  # (0, 1) -> tanh space, as Foolbox
        x_rec = to_model(w0)
        consts = torch.full((n,), float(job.budget), dtype=torch.float64)
        lower, upper = torch.zeros(n, dtype=torch.float64), torch.full((n,), math.inf, dtype=torch.float64)
        best, best_norm = x0.clone(), torch.full((n,), math.inf, device=x0.device)
        for search_step in range(binary_search_steps):
            if search_step == binary_search_steps - 1 and binary_search_steps >= 10:
                consts = upper.clamp(max=1e10)  # last step: retry at the best constant found
            delta = torch.zeros_like(w0)
            m, v = torch.zeros_like(w0), torch.zeros_like(w0)  # Adam state (Foolbox's AdamOptimizer)
            found = torch.zeros(n, dtype=torch.bool, device=x0.device)
            previous = math.inf
            c = consts.to(x0.device, torch.float32)
            for step in range(steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    x = to_model(w0 + delta)
                    logits = scores(x)
                    other = logits.detach().scatter(1, labels[:, None], -math.inf).argmax(1)
                    margin = logits[rows, other] - logits[rows, labels] if targeted else \
                        logits[rows, labels] - logits[rows, other]
                    loss = (c * (margin + confidence).clamp_min(0)).sum() + (x - x_rec).flatten(1).square().sum()
                    (grad,) = torch.autograd.grad(loss, delta)
                x, logits, delta = x.detach(), logits.detach(), delta.detach()
                m = b1 * m + (1 - b1) * grad
                v = b2 * v + (1 - b2) * grad.square()
                delta = delta - learning_rate * (m / (1 - b1 ** (step + 1))) / (
                    (v / (1 - b2 ** (step + 1))).sqrt() + 1e-8)
                if abort_early and step % math.ceil(steps / 10) == 0:
                    if not loss.item() <= 0.9999 * previous:
                        break  # no progress over the last tenth of the steps
                    previous = loss.item()
                # success as Foolbox judges it: the label's logit shifted by kappa against the argmax
                shifted = logits.scatter_add(1, labels[:, None], torch.full_like(logits[:, :1], -confidence if
                                                                                   targeted else confidence))
                is_adv = shifted.argmax(1) == labels if targeted else shifted.argmax(1) != labels
                found |= is_adv
                norms = (x - x0).flatten(1).norm(dim=1)
                new_best = is_adv & (norms < best_norm)
                best = torch.where(_view(new_best, x.ndim), x, best)
                best_norm = torch.where(new_best, norms, best_norm)
            found_cpu = found.cpu()
            upper = torch.where(found_cpu, consts, upper)
            lower = torch.where(found_cpu, lower, consts)
            consts = torch.where(upper.isinf(), consts * 10, (lower + upper) / 2)
        outs.append(best.cpu())
    return torch.cat(outs)


@attacks.register("cw-l2")
class CarliniWagnerL2(_CWLike):
    """Carlini & Wagner L2 (2017): Adam in tanh space on ||delta||^2 + c * margin loss, binary search on c.

    The budget is the initial constant c; the distance is unbounded. ``confidence``
    is kappa, the logit margin required. Examples it fails on come back unperturbed.
    ART's variant (line search, no Adam) ignores ``abort_early``.

    ``learning_rate`` is Adam's step in tanh space for Foolbox but the starting
    step of a doubling/halving line search for ART. Adam at 0.01 (Carlini's value,
    meant for 10,000 steps) barely moves saturated pixels (MNIST's black background)
    in 100: on strauss-mnist, 50 steps x 3 searches, c=1, Foolbox left robust
    accuracy 0.78 where ART left 0.36; at 0.1 Foolbox left 0.05 with a smaller
    median L2 (2.14 vs 2.21), still 15x faster. Hence the default of 0.1.
    """

    threat_model = "l2"
    # foolbox 14.7 ex/s vs art 0.7 ex/s (strauss-mnist, 50 steps x 3 searches, c=1, 2 CPU cores); at lr 0.1
    # Foolbox is also the stronger (docstring). Defaults (100 x 5) on 128 images: foolbox 25 s, ART 480 s.
    # torch: Foolbox's algorithm in plain PyTorch, for surfaces with their own objective (attack_logits); same
    # outputs as foolbox to 1e-6. Speed: `advbench bench attacks` (256 images, 50 x 3, c=1, nothing else
    # running) 16.8 vs 18.8 ex/s, identical robust accuracy and median L2; so Foolbox stays the default.
    backends = ("foolbox", "art", "torch")
    _targets_on_forward = True  # targeted runs use model(x), never the untargeted attack_logits

    def __init__(self, *, backend: Literal["foolbox", "art", "torch"] | None = None, confidence: float = 0.0,
                 steps: int = 100, learning_rate: float = 0.1, binary_search_steps: int = 5,
                 abort_early: bool = True):
        super().__init__(backend=backend)
        self._init(confidence, steps, learning_rate, binary_search_steps, abort_early)

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.learning_rate,
            confidence=self.confidence, initial_const=job.budget, abort_early=self.abort_early)
        adv, success = _foolbox_run(job, attack, None)
        return _foolbox_keep_failures_clean(job.x, adv, success)

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import CarliniL2Method

        return _art_generate(job, lambda c: CarliniL2Method(
            c, confidence=self.confidence, targeted=False, learning_rate=self.learning_rate,
            binary_search_steps=self.binary_search_steps, max_iter=self.steps, initial_const=job.budget,
            batch_size=job.batch_size, verbose=False), job.y)

    def _run_torch(self, job: _Job) -> torch.Tensor:
        return _torch_carlini_wagner_l2(job, confidence=self.confidence, steps=self.steps,
                                        learning_rate=self.learning_rate,
                                        binary_search_steps=self.binary_search_steps, abort_early=self.abort_early)


@attacks.register("ead")
class EAD(_CWLike):
    """Elastic-net attack EAD (Chen et al. 2018): C&W's loss plus beta * L1, by projected shrinkage (FISTA).

    The budget is the initial constant c; the distance is unbounded. ``beta`` is
    the L1 weight, ``decision_rule`` picks the best adversarial by elastic-net or
    L1 distance. ART's variant ignores ``abort_early``.
    """

    threat_model = "l1"
    # foolbox 25 ex/s vs art 1.0 ex/s (strauss-mnist, 50 steps x 3 searches, c=1, 2 CPU cores); both fool
    # all, median L2 2.07 vs 2.10. Defaults (100 x 5) on 128 images: foolbox 72 s, ART > 10 min.
    backends = ("foolbox", "art")

    def __init__(self, *, backend: Literal["foolbox", "art"] | None = None, beta: float = 0.01,
                 confidence: float = 0.0, steps: int = 100, learning_rate: float = 0.01,
                 binary_search_steps: int = 5, decision_rule: Literal["EN", "L1"] = "EN",
                 abort_early: bool = True):
        super().__init__(backend=backend)
        self._init(confidence, steps, learning_rate, binary_search_steps, abort_early)
        _check_positive("beta", beta, allow_zero=True)
        self.beta = beta
        self.decision_rule = decision_rule

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.EADAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, initial_stepsize=self.learning_rate,
            confidence=self.confidence, initial_const=job.budget, regularization=self.beta,
            decision_rule=self.decision_rule, abort_early=self.abort_early)
        adv, success = _foolbox_run(job, attack, None)
        return _foolbox_keep_failures_clean(job.x, adv, success)

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import ElasticNet

        return _art_generate(job, lambda c: ElasticNet(
            c, confidence=self.confidence, targeted=False, learning_rate=self.learning_rate,
            binary_search_steps=self.binary_search_steps, max_iter=self.steps, beta=self.beta,
            initial_const=job.budget, batch_size=job.batch_size, decision_rule=self.decision_rule,
            verbose=False), job.y)


# --------------------------------------------------------------------------- L0


@attacks.register("jsma")
class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (Papernot et al. 2016), targeted at random classes (seeded).

    Raises two salient features by ``theta`` per iteration until the target class
    wins or a fraction gamma (the budget; None = 1) of the features has changed;
    ART's check comes after each pair, so the count can pass gamma by one pair.
    """

    threat_model = "l0"
    budget_param = "gamma"
    unbounded_ok = True
    targeted = True
    backends = ("art",)  # Foolbox 3 has no JSMA

    def __init__(self, *, backend: Literal["art"] | None = None, theta: float = 1.0):
        super().__init__(backend=backend)
        if theta == 0 or not math.isfinite(theta):
            raise ValueError(f"theta must be a nonzero finite change per feature, got {theta}")
        self.theta = theta

    def make_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> torch.Tensor:
        return _make_targets("random", model, x, y, seed)

    def _run_art(self, job: _Job) -> torch.Tensor:
        from art.attacks.evasion import SaliencyMapMethod

        gamma = 1.0 if job.budget is None else job.budget
        return _art_generate(job, lambda c: SaliencyMapMethod(
            c, theta=self.theta, gamma=gamma, batch_size=job.batch_size, verbose=False), job.targets)


# --------------------------------------------------------------------------- corruptions


@attacks.register("gaussian-blur")
class GaussianBlur(Attack):
    """Gaussian blur with the smallest misclassifying sigma (Foolbox line search), L2-bounded by eps.

    Sigma grows linearly in ``steps`` steps up to ``max_sigma`` (None: the image's
    larger side); an eps budget scales the blur's change down to L2 norm eps,
    None leaves it unbounded. Examples still classified correctly at max_sigma
    come back unperturbed.
    """

    threat_model = "corruption"
    unbounded_ok = True
    backends = ("foolbox",)

    def __init__(self, *, backend: Literal["foolbox"] | None = None, steps: int = 200,
                 max_sigma: float | None = None):
        super().__init__(backend=backend)
        _check_positive("steps", steps)
        if max_sigma is not None:
            _check_positive("max_sigma", max_sigma)
        self.steps = steps
        self.max_sigma = max_sigma

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.GaussianBlurAttack(distance=fb.distances.l2, steps=self.steps, channel_axis=1,
                                               max_sigma=self.max_sigma)
        return _foolbox_run(job, attack, job.budget)[0]


@attacks.register("gaussian-noise")
class GaussianNoise(Attack):
    """Additive Gaussian noise of L2 norm eps, resampled up to ``repeats`` times until misclassified (Foolbox).

    With ``check_trivial``, inputs already misclassified are left as they are;
    examples no draw fools come back unperturbed.
    """

    threat_model = "corruption"
    backends = ("foolbox",)

    def __init__(self, *, backend: Literal["foolbox"] | None = None, repeats: int = 100,
                 check_trivial: bool = True):
        super().__init__(backend=backend)
        _check_positive("repeats", repeats)
        self.repeats = repeats
        self.check_trivial = check_trivial

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.L2RepeatedAdditiveGaussianNoiseAttack(repeats=self.repeats,
                                                                 check_trivial=self.check_trivial)
        return _foolbox_run(job, attack, job.budget)[0]


@attacks.register("salt-and-pepper")
class SaltAndPepper(Attack):
    """Salt-and-pepper noise of the smallest misclassifying density (Foolbox search), L2-bounded by eps.

    Runs ``steps`` noise draws of adaptively growing density; with
    ``across_channels`` a pixel's channels flip together. An eps budget scales
    the change down to L2 norm eps, None leaves it unbounded.
    """

    threat_model = "corruption"
    unbounded_ok = True
    backends = ("foolbox",)

    def __init__(self, *, backend: Literal["foolbox"] | None = None, steps: int = 1000,
                 across_channels: bool = True):
        super().__init__(backend=backend)
        _check_positive("steps", steps)
        self.steps = steps
        self.across_channels = across_channels

    def _run_foolbox(self, job: _Job) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.SaltAndPepperNoiseAttack(steps=self.steps, across_channels=self.across_channels,
                                                     channel_axis=1)
        return _foolbox_run(job, attack, job.budget)[0]
