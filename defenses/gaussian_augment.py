"""Gaussian-noise data augmentation (Strauss et al. 2017, ensemble method iv, for one model)."""

import torch

from bench.defense import ClassifierDefense
from bench.registry import defenses


@defenses.register("gaussian-augment", version="1")
class GaussianAugment(ClassifierDefense):
    """Classifier trained on images with additive Gaussian noise (std), clipped to [0, 1]."""

    def __init__(self, *, std: float = 0.3, **classifier_params):
        if std < 0:
            raise ValueError("std must be >= 0")
        super().__init__(**classifier_params)
        self.std = std

    def augment(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        x, y = super().augment(x, y, generator)
        noise = torch.randn(x.shape, generator=generator) * self.std
        return (x + noise).clamp_(0.0, 1.0), y
