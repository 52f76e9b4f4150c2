"""The field's standard adversarial-training baselines (issue 27): PGD adversarial training (Madry et al. 2018)
and TRADES (Zhang et al. 2019), on any registered architecture.

Both craft their training examples on the current model, batch by batch, inside the harness's training loop
(``bench.training.train_classifier``: our seed, shuffling, optimizer, schedule, crop/flip and progress bar):

* ``pgd-at`` minimizes the cross-entropy on PGD examples only (Madry et al.'s min-max objective)::

      min_θ E[ max_{‖δ‖ ≤ ε} J(θ, x + δ, y) ],   the inner max by ``steps`` PGD steps of ``step_size`` from a
                                                 uniform random start in the ε ball (L∞ or L2);

* ``trades`` minimizes the clean cross-entropy plus β times the KL divergence between the predictions on the
  clean image and on x', the point of the L∞ ε ball that maximizes that KL (found by PGD from x + 0.001·N(0, I),
  as the authors' code does)::

      min_θ E[ J(θ, x, y) + β · max_{‖x' − x‖∞ ≤ ε} KL(f_θ(x) ‖ f_θ(x')) ].

The inner maximization runs with the model in eval mode (dropout off, batch norm on its running statistics), as
TRADES's code and ART's trainers do; the outer step in train mode. The crafted examples are constants of the
outer step (no gradient through their crafting). The random starts draw from a generator on the training device
seeded from the task's seed, so a run is reproducible.

``eps_warmup`` (epochs, default 0: the papers' setting) grows eps and step_size linearly from 0 over the first
epochs, batch by batch. Without it, PGD training at MNIST's ε 0.3 from the first batch leaves the seed papers'
small nets at the constant predictor (loss ln 10, measured on mnist5k for the Monteiro, Strauss and Abbasi CNNs,
Adam and SGD, up to 1,900 batches); with it the Monteiro and Abbasi CNNs learn (docs/defenses.md).

Defaults are the papers' MNIST settings (ε 0.3, 40 steps of 0.01); on CIFAR-10 ε 8/255 (0.031), Madry et al. with
7 steps of 2/255, TRADES with 10 steps of 0.007. docs/defenses.md has both, and what they cost.

Checked against ART 1.20's ``AdversarialTrainerMadryPGD`` and ``AdversarialTrainerTRADESPyTorch`` on the same
net, initial weights and data (scripts/compare_adversarial_training.py; numbers in docs/defenses.md): robust
accuracy within a point on sklearn's digits and within 3-7 points on mnist5k (one seed), 1.2-1.9x faster per
epoch. ART's are not wrapped: they shuffle with NumPy's global generator, train through ART's own optimizer step
(no schedule, augmentation or progress bar of ours), and ART's TRADES crafts x' by PGD on the cross-entropy of
the label rather than on the KL term of the paper.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import DatasetSplits
from bench.defense import ClassifierDefense
from bench.registry import defenses


def _check_budget(eps: float, steps: int, step_size: float, norm: str, eps_warmup: int, epochs: int) -> None:
    """A clear error for a budget that cannot be meant: eps outside the image range (ART's trainers default to
    0-255 pixel units: 8 where ours is 8/255), no steps, a step of 0, a warm-up that never reaches eps."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps} (eps 0 is plain training: use 'undefended')")
    if norm == "linf" and eps > 1:
        raise ValueError(f"eps must be <= 1 for norm linf, got {eps}: images are in [0, 1] (8/255, not 8)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not 0 <= eps_warmup < epochs:
        raise ValueError(f"eps_warmup must be in [0, epochs) = [0, {epochs}), got {eps_warmup}: at least the last "
                         "epoch trains at the full eps")


def _per_example(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x`` projected onto the ``norm`` ball of radius ``eps`` around ``x0``, then clipped to [0, 1]."""
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1)
        delta = delta * _per_example((eps / norms.clamp_min(1e-12)).clamp(max=1.0), delta.ndim)
    return (x0 + delta).clamp(0.0, 1.0)


def _step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The ascent direction: the gradient's sign (L∞) or the gradient normalized per example (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_example(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad.ndim)


class _InnerMaxTraining(ClassifierDefense):
    """What the two trainers share: the budget (with its warm-up), the inner maximization and the seeded
    generator of its random starts. (No ``__init__`` of its own: the registry reads a defense's parameters off
    its classes' ``__init__``s.)"""

    eps: float
    steps: int
    step_size: float
    norm: str
    eps_warmup: int
    _stream: int = 0  # the random starts' seed: set by fit from the task's seed (0 outside fit)
    _noise: torch.Generator | None = None
    _ramp: int = 0    # batches of the warm-up (set by fit), and batches trained so far
    _batch: int = 0

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """Each batch: ``steps`` input gradients of the inner maximization, then the training step's forward and
        backward (TRADES: on the clean and the crafted batch, and a forward for the KL's target)."""
        from bench.attacks.base import FORWARD_BACKWARD, INPUT_GRADIENT

        steps = int(params.get("steps", 40))
        extra = 0 if cls is PGDAdversarialTraining else FORWARD_BACKWARD + 1
        return (steps * INPUT_GRADIENT + FORWARD_BACKWARD + extra) / FORWARD_BACKWARD

    def _set_budget(self, eps: float, steps: int, step_size: float, norm: str, eps_warmup: int) -> None:
        _check_budget(eps, steps, step_size, norm, eps_warmup, self.train_config.epochs)
        self.eps, self.steps, self.step_size, self.norm, self.eps_warmup = eps, steps, step_size, norm, eps_warmup

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        # Its own stream, apart from the training loop's (shuffling, augmentation) of the same seed.
        self._stream, self._noise = zlib.crc32(f"{type(self).__name__}:{seed}".encode()), None
        self._ramp = self.eps_warmup * math.ceil(len(data.train_x) / self.train_config.batch_size)
        self._batch = 0
        super().fit(data, seed=seed, progress=progress)

    def _budget_now(self) -> float:
        """The fraction of eps (and step_size) of this training batch: (k + 1) / K over the warm-up's K batches,
        then 1; counts the batch."""
        self._batch += 1
        return min(1.0, self._batch / self._ramp) if self._ramp else 1.0

    def _draw(self, shape: torch.Size, device: torch.device, gaussian: bool = False) -> torch.Tensor:
        """Uniform [0, 1) (or standard normal) draws on ``device``, from the generator of the random starts."""
        if self._noise is None or self._noise.device.type != device.type:
            self._noise = torch.Generator(device=device).manual_seed(self._stream)
        draw = torch.randn if gaussian else torch.rand
        return draw(shape, generator=self._noise, device=device)

    def _ascend(self, model: nn.Module, x0: torch.Tensor, x: torch.Tensor, loss_of, scale: float) -> torch.Tensor:
        """``steps`` projected ascent steps of ``loss_of(model, x)`` (summed over the batch) from ``x``, with
        the model in eval mode, at ``scale`` times eps and step_size; returns a constant (detached) batch in the
        ball and in [0, 1]."""
        eps, step_size = self.eps * scale, self.step_size * scale
        was_training = model.training
        model.eval()
        try:
            for _ in range(self.steps):
                x = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(loss_of(model, x), x)
                x = _project(x.detach() + step_size * _step(grad, self.norm), x0, eps, self.norm)
        finally:
            model.train(was_training)
        return x.detach()


@defenses.register("pgd-at", version="1")
class PGDAdversarialTraining(_InnerMaxTraining):
    """Classifier trained on PGD examples of the current model (Madry et al. 2018): eps, steps of step_size.

    Defaults: the paper's MNIST setting, L∞ ε 0.3, 40 steps of 0.01 from a random start. CIFAR-10: ε 8/255,
    7 steps of 2/255. ``norm: l2`` takes an L2 ball (steps along the normalized gradient); ``eps_warmup``
    ramps eps up over the first epochs."""

    def __init__(self, *, eps: float = 0.3, steps: int = 40, step_size: float = 0.01, random_start: bool = True,
                 norm: Literal["linf", "l2"] = "linf", eps_warmup: int = 0, **classifier_params):
        super().__init__(**classifier_params)
        self._set_budget(eps, steps, step_size, norm, eps_warmup)
        self.random_start = random_start

    def _start(self, x0: torch.Tensor, eps: float) -> torch.Tensor:
        """A uniform draw from the ε ball around each image (L2: Voelker et al. 2017), clipped to [0, 1]."""
        if not self.random_start:
            return x0.clone()
        if self.norm == "linf":
            delta = (self._draw(x0.shape, x0.device) * 2 - 1) * eps
        else:
            n = x0[0].numel()
            r = self._draw(torch.Size((len(x0), n + 2)), x0.device, gaussian=True)
            delta = (r / r.norm(dim=1, keepdim=True).clamp_min(1e-12))[:, :n].reshape(x0.shape) * eps
        return (x0 + delta).clamp(0.0, 1.0)

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             scale: float = 1.0) -> torch.Tensor:
        """The PGD examples a training step fits: ascending the summed cross-entropy of the labels (at ``scale``
        times eps and step_size: the warm-up)."""
        x0 = x.detach()
        return self._ascend(model, x0, self._start(x0, self.eps * scale),
                            lambda m, xa: F.cross_entropy(m(xa), y, reduction="sum"), scale)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(self.adversarial_examples(model, x, y, self._budget_now())), y)


@defenses.register("trades", version="1")
class TRADES(_InnerMaxTraining):
    """Classifier trained on CE(f(x), y) + beta * KL(f(x) || f(x')), x' the KL's PGD maximizer (Zhang et al. 2019).

    L∞ only. Defaults: beta 6, L∞ ε 0.3, 40 steps of 0.01 (the paper's MNIST setting);
    CIFAR-10: ε 8/255 (0.031), 10 steps of 0.007."""

    def __init__(self, *, beta: float = 6.0, eps: float = 0.3, steps: int = 40, step_size: float = 0.01,
                 eps_warmup: int = 0, **classifier_params):
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        super().__init__(**classifier_params)
        self._set_budget(eps, steps, step_size, "linf", eps_warmup)
        self.beta = beta

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """x': PGD on KL(f(x) || f(x')) (summed over the batch) from x + 0.001·N(0, I), f(x) held fixed (at
        ``scale`` times eps and step_size: the warm-up)."""
        x0 = x.detach()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            target = F.softmax(model(x0), dim=1)
        model.train(was_training)
        start = x0 + 0.001 * self._draw(x0.shape, x0.device, gaussian=True)
        return self._ascend(model, x0, start,
                            lambda m, xa: F.kl_div(F.log_softmax(m(xa), dim=1), target, reduction="sum"), scale)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.adversarial_examples(model, x, self._budget_now())
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust
