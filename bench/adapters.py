"""Wrap a PyTorch module (an attack surface) for ART and Foolbox.

Imports of ART and Foolbox are local: they are slow, and a rerun of a finished
suite must not pay for them.
"""

from __future__ import annotations

import torch
from torch import nn


def to_foolbox(module: nn.Module, device: torch.device | str = "cpu"):
    import foolbox as fb

    return fb.PyTorchModel(module.eval(), bounds=(0.0, 1.0), device=torch.device(device))


def to_art(module: nn.Module, input_shape: tuple[int, ...], num_classes: int,
           device: torch.device | str = "cpu"):
    from art.estimators.classification import PyTorchClassifier

    device_type = "gpu" if torch.device(device).type == "cuda" else "cpu"
    return PyTorchClassifier(
        model=module.eval(),
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type=device_type,
    )
