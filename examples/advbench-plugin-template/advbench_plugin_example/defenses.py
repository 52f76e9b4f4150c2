"""A test-time defense: bit-depth reduction (Xu et al. 2018, "Feature Squeezing"), in front of a classifier.

The classifier is trained as usual (``ClassifierDefense``: the suite sets ``epochs``, ``arch``, ``lr``, ...);
at test time every input is rounded to ``2**bits`` grey levels before the classifier sees it. The
rounding is what the defense *does*, so ``deployed()`` returns quantizer + classifier: the harness scores
that module, and white-box attacks on the ``deployed`` surface attack it.

Rounding has a zero gradient almost everywhere, which would make gradient attacks fail for the wrong
reason (gradient masking). The quantizer therefore passes gradients straight through (BPDA, Athalye et
al. 2018): the forward pass is the exact rounding, the backward pass the identity. The extra surface
``classifier`` is the classifier without the quantizer, for transfer-style white-box attacks
(``surface: classifier`` in a suite).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.defense import ClassifierDefense
from bench.models import InputSpec
from bench.registry import defenses


class Quantize(nn.Module):
    """Round [0, 1] images to ``levels`` evenly spaced values; gradients pass straight through (BPDA)."""

    def __init__(self, levels: int):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.levels - 1
        rounded = torch.round(x.clamp(0.0, 1.0) * steps) / steps
        return x + (rounded - x).detach()  # value: rounded; gradient: the identity


# ``version``: bump it when a change alters what the defense produces, so stored results are recomputed.
@defenses.register("bit-depth", version="1")
class BitDepthReduction(ClassifierDefense):
    """A classifier behind test-time bit-depth reduction: inputs rounded to 2**bits grey levels (Xu et al. 2018)."""

    def __init__(self, *, bits: int = 3, **classifier_params):
        # Keyword-only, typed and defaulted: what a suite may set (``advbench list defenses`` shows them).
        # Range checks raise ValueError, which the suite loader reports with the file and key.
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        super().__init__(**classifier_params)  # arch, epochs, batch_size, lr, optimizer, ...
        self.bits = bits

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        super().setup(spec, seed=seed, device=device)  # builds self.model
        self.squeezed = nn.Sequential(Quantize(2 ** self.bits), self.model)

    def deployed(self) -> nn.Module:
        return self.squeezed  # exactly what decides at test time: the harness scores it, attacks see it

    def surfaces(self) -> dict[str, nn.Module]:
        return {"deployed": self.deployed(), "classifier": self.model}

    def surface_names(self) -> list[str]:
        return ["deployed", "classifier"]  # known before training, for suite validation
