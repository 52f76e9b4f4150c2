"""Defensive distillation (Papernot et al. 2016), as compared in Strauss et al. 2017, Sec. 4.3.

1. A teacher F (same architecture and training parameters) is trained with a
   softmax at temperature T: cross-entropy on F(x)/T.
2. Its soft labels F^T(X) = softmax(F(X)/T) on the training set are computed.
3. The student (the deployed network) is trained on those soft labels at the
   same temperature, then deployed at T = 1, i.e. its plain logits.

T = 10 as in Strauss et al. (after Papernot et al.'s experiments). The
checkpoint holds only the student; the teacher exists only during ``fit``.
"""

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks.base import FORWARD_BACKWARD
from bench.data import DatasetSplits
from bench.defense import ClassifierDefense
from bench.registry import defenses
from bench.training import train_classifier


@defenses.register("distillation", version="1")
class DefensiveDistillation(ClassifierDefense):
    """Student trained at temperature T on a temperature-T teacher's soft labels, deployed at T = 1."""

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """A teacher and a student, each trained as long, and the teacher's soft labels (a forward pass)."""
        return 2 + 1 / (FORWARD_BACKWARD * float(params.get("epochs") or 1))

    def __init__(self, *, temperature: float = 10.0, **classifier_params):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(**classifier_params)
        self.temperature = temperature

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Softmax at temperature T; y is hard labels (teacher) or soft-label rows (student):
        # cross_entropy takes either.
        return F.cross_entropy(model(x) / self.temperature, y)

    @torch.no_grad()
    def soft_labels(self, teacher: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """F^T(x) = softmax(teacher(x) / T) for CPU images x, as CPU float rows."""
        teacher.eval()
        return torch.cat([F.softmax(teacher(x[i:i + batch_size].to(self.device)) / self.temperature, dim=1).cpu()
                          for i in range(0, len(x), batch_size)])

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        teacher_seed, student_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
        # A copy shares this defense's architecture and training parameters; its setup gives it
        # its own freshly initialised model, leaving self.model (the student) untouched.
        teacher = copy.copy(self)
        teacher.setup(self.spec, seed=teacher_seed, device=self.device)
        train_classifier(teacher.model, data.train_x, data.train_y, self.train_config, seed=teacher_seed,
                         device=self.device, transform=self.augment, loss_fn=self.training_loss,
                         progress=progress, desc="distillation teacher")
        soft = self.soft_labels(teacher.model, data.train_x)
        train_classifier(self.model, data.train_x, soft, self.train_config, seed=student_seed,
                         device=self.device, transform=self.augment, loss_fn=self.training_loss,
                         progress=progress, desc="distillation student")
