"""Shared fixtures: a tiny suite on sklearn's 8x8 digits that runs end to end in seconds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

TINY_SUITE = """\
name: tiny
seeds: [0]
device: cpu
batch_size: 128
datasets:
  - name: digits
    eval_size: 60
defenses:
  - name: undefended
    params: {epochs: 4, batch_size: 64}
  - name: gaussian-augment
    label: gauss
    params: {std: 0.2, epochs: 4, batch_size: 64}
attacks:
  - name: fgsm
    budgets: [0.1, 0.3]
  - name: pgd-linf
    params: {steps: 5, rel_stepsize: 0.5}
    budgets: [0.1, 0.3]
  - name: fgsm
    label: fgsm-transfer
    transfer_from: undefended
    budgets: [0.3]
"""


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite file (default: the tiny suite) and return its path."""

    def write(text: str = TINY_SUITE, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
