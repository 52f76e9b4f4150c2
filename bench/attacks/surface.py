"""The attack-surface protocol: what a model may offer the attacks beyond its forward pass.

A defense's attack surface (``Defense.surface(name)``) is an ``nn.Module`` whose ``forward`` gives the logits.
It may also define either hook, or both:

* ``attack_loss(x, labels)`` (``HasAttackLoss``): the loss a gradient attack ascends, summed over the batch,
  in place of cross-entropy (an ensemble's mean member loss, Grad. 2, defenses/ensemble.py; the dustbin's
  reject-aware margin, defenses/dustbin.py; a detector-aware surface's hinges, bench.detection.adaptive).
  The loops that need a loss per example (APGD) refuse a surface that has one.
* ``attack_logits(x, labels)`` (``HasAttackLogits``): logits that judge success where ``forward``'s do not (a
  detector or a reject option folded in: the true class's column raised to the rejection's logit, so that
  the argmax is "wrong" only where the attack gets through). The loops read them for their success test, C&W's
  margin, the score-based members' scores, and cross-entropy where the surface has no ``attack_loss``. They are
  untargeted: a targeted attack refuses such a surface (C&W, whose targeted runs read ``forward``, excepted).

Only the plain-PyTorch backends honour the hooks: ``Attack.run`` refuses a surface with either on another
backend. Every reader in bench/attacks asks ``custom_loss`` / ``custom_logits``, never the model directly.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, runtime_checkable

import torch

# A hook as the attacks call it: (x, labels) -> a loss (summed over the batch) or logits.
SurfaceHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class HasAttackLoss(Protocol):
    """A surface with its own loss for gradient attacks to ascend (the module docstring)."""

    def attack_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss to ascend, summed over the batch (a scalar)."""
        ...


@runtime_checkable
class HasAttackLogits(Protocol):
    """A surface whose success the attacks judge on its own logits (the module docstring)."""

    def attack_logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, K) logits whose argmax differs from ``labels`` exactly where the attack succeeds."""
        ...


def custom_loss(model: object) -> Optional[SurfaceHook]:
    """The surface's ``attack_loss`` (``HasAttackLoss``), or None where it defines none."""
    return getattr(model, "attack_loss", None)


def custom_logits(model: object) -> Optional[SurfaceHook]:
    """The surface's ``attack_logits`` (``HasAttackLogits``), or None where it defines none."""
    return getattr(model, "attack_logits", None)
