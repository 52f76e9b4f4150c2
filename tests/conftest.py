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
checks: false            # the harness's mechanics; the soundness checks' tasks: tests/test_checks.py
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


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits (1,437 train / 360 test), loaded once per test module."""
    from bench.data import DataContext, load_dataset

    return load_dataset("digits", {}, DataContext("data"))


def trained_defense(data, name: str, seed: int = 0, **params):
    """Registered defense ``name`` built with ``params``, set up for ``data`` and trained on it (CPU, quiet)."""
    from bench.registry import defenses

    defense = defenses.get(name).build(**params)
    defense.setup(data.input_spec(), seed=seed, device=torch.device("cpu"))
    defense.fit(data, seed=seed, progress=False)
    return defense


def digits_for_detection():
    """sklearn's 8x8 digits: 700 training and 360 test images (the detector tests' data)."""
    from bench.data import DataContext, load_dataset

    return load_dataset("digits", {}, DataContext("data"), train_size=700, test_size=360, seed=0)


def trained_digits_bimodel(data):
    """A bimodel-mismatch pair trained on ``data``: a CNN and an MLP, as the paper's MNIST pair
    (monteiro-cnn needs ~28x28 inputs; digits are 8x8)."""
    from bench.registry import defenses

    det = defenses.get("bimodel-mismatch").build(model_a="strauss-mnist", model_b="monteiro-mlp", epochs=4,
                                                 batch_size=64, lr=3e-3, optimizer="adam")
    det.setup(data.input_spec(), seed=0, device=torch.device("cpu"))
    det.fit(data, seed=0, progress=False)
    return det
