"""FGSM adversarial training (Goodfellow et al. 2015), as compared in Strauss et al. 2017, Sec. 4.3.

Each batch's loss mixes the clean loss and the loss on that batch's FGSM
examples, crafted on the current model:

    J_AT(θ, x, y) = ρ·J(θ, x, y) + (1 − ρ)·J(θ, x + ε·sign(∇ₓJ(θ, x, y)), y)

with ρ = 1/2 (Goodfellow et al.) and ε = 0.3 on MNIST (the paper's FGSM budget).
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.defense import ClassifierDefense
from bench.registry import defenses


@defenses.register("adv-training", version="1")
class AdversarialTraining(ClassifierDefense):
    """Classifier trained on rho * clean loss + (1 - rho) * loss on FGSM examples of size eps."""

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """The clean forward, the FGSM input gradient, the FGSM forward, both backwards."""
        return 8 / 3

    def __init__(self, *, eps: float = 0.3, rho: float = 0.5, **classifier_params):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not 0 <= rho <= 1:
            raise ValueError(f"rho must be in [0, 1], got {rho}")
        super().__init__(**classifier_params)
        self.eps, self.rho = eps, rho

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        clean = F.cross_entropy(model(x), y)
        # The FGSM direction comes from the same forward pass; the clean loss still needs its graph.
        (grad,) = torch.autograd.grad(clean, x, retain_graph=True)
        # The adversarial example is a constant input (Goodfellow et al.): no gradient through its crafting.
        x_adv = (x + self.eps * grad.sign()).clamp(0.0, 1.0).detach()
        return self.rho * clean + (1 - self.rho) * F.cross_entropy(model(x_adv), y)
