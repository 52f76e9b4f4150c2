"""Sparse (L0) attacks: JSMA. Where to add an attack: docs/architecture.md."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import art_generate
from .base import INPUT_GRADIENT, Attack, AttackJob, make_targets


@attacks.register("jsma")
class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (Papernot et al. 2016), targeted at random classes (seeded).

    Raises two salient features by ``theta`` per iteration until the target class
    wins or a fraction gamma (the budget; None = 1) of the features has changed;
    ART's check comes after each pair, so the count can pass gamma by one pair.
    """

    threat_model = ThreatModel.L0
    budget_param = "gamma"
    unbounded_ok = True
    targeted = True
    backends = ("art",)  # Foolbox 3 has no JSMA
    step_param = None  # its iterations are bounded by gamma, not counted

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """Two pixels per step, up to gamma of them (the budget; None counted as 0.1); a class gradient and the
        target's each step. Images of unknown shape are counted as 784 pixels."""
        pixels = math.prod(shape) if shape else 784
        return max(1.0, (budget or 0.1) * pixels / 2) * (1 + 2 * INPUT_GRADIENT)

    def __init__(self, *, backend: str | None = None, theta: float = 1.0):
        super().__init__(backend=backend)
        if theta == 0 or not math.isfinite(theta):
            raise ValueError(f"theta must be a nonzero finite change per feature, got {theta}")
        self.theta = theta

    def make_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> torch.Tensor:
        return make_targets("random", model, x, y, seed)

    def _run_art(self, job: AttackJob) -> torch.Tensor:
        from art.attacks.evasion import SaliencyMapMethod

        gamma = 1.0 if job.budget is None else job.budget
        return art_generate(job, lambda c: SaliencyMapMethod(
            c, theta=self.theta, gamma=gamma, batch_size=job.batch_size, verbose=False), job.targets)
