"""Attacks: wrappers around Foolbox, ART and plain PyTorch behind one interface.

Where to add an attack (one class in one file of this package): docs/architecture.md.

Every attack maps a batch of images in [0, 1] (NCHW, float32, on the CPU) and
their labels to adversarial images of the same shape, on the CPU, in [0, 1]::

    attack = get_attack("pgd-linf", {"steps": 20})
    x_adv = attack.run(model, x, y, budget=0.03, device="cuda", seed=0)

* ``threat_model`` (a ``bench.threat_models.ThreatModel``) says which distance the
  attack works in, ``budget_param`` (a key of ``BUDGET_KINDS``, which describes
  each kind's checks as data) what a budget number means (an ``eps`` distance
  bound, the C&W/EAD constant ``c``, or JSMA's ``gamma``, the largest fraction of
  features changed), and ``unbounded_ok`` whether a budget of ``None`` is allowed
  (minimization attacks: no distance bound).
* ``backends`` lists the implementations; the first is the default, the fastest
  at equal strength when measured (the comment on each class gives the numbers).
  ``torch`` is a plain PyTorch loop, also the reference the tests compare the
  library versions against.
* The keyword-only parameters of each class's ``__init__`` are what a suite may
  set; the registry validates their types with pydantic, ``__init__`` their
  ranges (``ValueError``, which the suite loader reports with file and key).
  ``backend`` is declared ``str | None``; ``Attack.__init_subclass__`` annotates it
  with the class's own ``backends`` (``Optional[Literal[...]]``).
* Runs are reproducible: the same seed gives the same output. Library randomness
  (torch's and numpy's global generators) is seeded inside a fork and the global
  state is restored afterwards; the model's train/eval flags and its parameters'
  ``requires_grad`` are restored too, and no gradient is left on a parameter.
* A surface may define ``attack_loss(x, y)`` and ``attack_logits(x, y)`` for the plain-PyTorch loops to read
  (``HasAttackLoss``, ``HasAttackLogits``: bench/attacks/surface.py); every reader asks ``custom_loss(model)`` /
  ``custom_logits(model)``, and the other backends refuse such a surface.
* Examples an attack fails on come back unperturbed or as the library returns
  them; for an ``eps`` budget the result is always projected onto the budget ball
  (a no-op up to rounding), so the harness may rely on it. The harness scores.
"""

from __future__ import annotations

from ..threat_models import ThreatModel
from .backends import art_generate, attack_loss, foolbox_keep_failures_clean, foolbox_run, torch_gradient_attack
from .base import (Attack, attack_context, check_images, check_positive, eval_mode, get_attack, make_targets,
                   model_device, project, random_targets)
from .budgets import BUDGET_KINDS, Bound, BudgetKind
from .job import AttackJob
from .surface import HasAttackLogits, HasAttackLoss, custom_logits, custom_loss
# Importing the family modules registers their attacks (bench.registry imports this package lazily).
from .apgd import APGDCE, APGDDLR, APGDT, APGDCEL2, APGDDLRL2, APGDTL2
from .autoattack import AutoAttack, AutoAttackL2
from .corruption import GaussianBlur, GaussianNoise, SaltAndPepper
from .fab import FABT, FABTL2
from .gradient import BIM, FGSM, PGDL2, FGSMTargeted, PGDLinf
from .minimization import EAD, CarliniWagnerL2, DeepFool, torch_carlini_wagner_l2
from .noise import NoiseL2, NoiseLinf
from .sparse import JSMA
from .square import Square, SquareL2

THREAT_MODELS = tuple(t.value for t in ThreatModel)  # compatibility: the plain values

# The old private names, for importers not yet moved to the public ones; to be removed.
_eval_mode = eval_mode
_model_device = model_device

__all__ = [
    "THREAT_MODELS", "BUDGET_KINDS", "Attack", "AttackJob", "Bound", "BudgetKind", "ThreatModel",
    "get_attack", "attack_loss", "eval_mode", "model_device", "attack_context", "check_images",
    "check_positive", "make_targets", "random_targets", "project",
    "HasAttackLoss", "HasAttackLogits", "custom_loss", "custom_logits",
    "art_generate", "foolbox_run", "foolbox_keep_failures_clean", "torch_gradient_attack", "torch_carlini_wagner_l2",
    "FGSM", "FGSMTargeted", "BIM", "PGDLinf", "PGDL2", "DeepFool", "CarliniWagnerL2", "EAD", "JSMA",
    "GaussianBlur", "GaussianNoise", "SaltAndPepper",
    "NoiseLinf", "NoiseL2",
    "APGDCE", "APGDCEL2", "APGDDLR", "APGDDLRL2", "APGDT", "APGDTL2", "FABT", "FABTL2", "Square", "SquareL2",
    "AutoAttack", "AutoAttackL2",
]
