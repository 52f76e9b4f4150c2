"""A ``results`` row's identity, built in one place for every step that writes one.

A row of the store's ``results`` table is identity (which dataset, defense, seed, surface, attack, budget:
``ResultIdentity``) + metrics (``bench.metrics.row_metrics``) + provenance (stamped by
``bench.runner.tasks``). The score step, the probe and the noise check write such rows; the report reads
them back through one identity (``bench.report.rows.Row.identity``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..plan import Task
from ..plan.specs import DEPLOYED, TrainSpec


@dataclass(frozen=True)
class Attacked:
    """What a row's examples went through: an attack with its config, or nothing (``CLEAN``). ``attack`` is the
    suite's label (or a check's), ``source`` "white-box", "transfer:<label>" or a check source."""

    attack: str = "none"
    config: Mapping[str, Any] = field(default_factory=dict)
    threat_model: str = "none"
    surface: str = ""
    source: str = ""
    budget_param: str = ""
    budget: float | None = None


CLEAN = Attacked()


def wrong_class_flags(pred_adv: torch.Tensor, y: torch.Tensor, num_classes: int,
                      reject_class: int | None) -> dict[str, Any]:
    """``wrong_class`` (bench.store) of a row whose predictions ``pred_adv`` (repeats, N) include abstentions
    (an output ``num_classes`` that is no reject option): per example, a wrong class was decided in some repeat.
    Nothing where no prediction abstained (``correct`` then says the same)."""
    abstained = pred_adv >= num_classes
    if reject_class is not None or not bool(abstained.any()):
        return {}
    return {"wrong_class": ((pred_adv != y) & ~abstained).any(dim=0).numpy()}


def result_row(task: Task, train: TrainSpec, attacked: Attacked, *, evaluated_on: str = DEPLOYED) -> dict[str, Any]:
    """The identity columns of a result row of ``task`` (its ``about`` names dataset, defense and seed), on the
    defense ``train`` trained, evaluated on the surface ``evaluated_on``; the step adds the metrics."""
    about = task.about
    return {"dataset": about.dataset, "defense": about.defense, "defense_name": train.defense.name,
            "defense_config": json.dumps(train.defense.payload(), sort_keys=True), "seed": about.seed,
            "evaluated_on": evaluated_on, "attack": attacked.attack,
            "attack_config": json.dumps(dict(attacked.config), sort_keys=True),
            "threat_model": attacked.threat_model, "surface": attacked.surface, "source": attacked.source,
            "budget_param": attacked.budget_param, "budget": attacked.budget}
