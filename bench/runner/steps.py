"""The robustness task steps: train a defense, craft adversarial examples, score a defense on them.

A step is a function ``step(task, upstream, ctx, store) -> rows`` registered under its task kind in
``bench.registry.task_steps`` with its ``version`` (part of the kind's task keys: bump it when the
step's output changes) and the store ``table`` its rows go to (None: the step only writes an
artifact). ``bench.runner.tasks.run_task`` stamps the rows with the task's key, wall time and
provenance and records them. A row's ``upstream_wall_time_s`` (popped) is time spent upstream that
its number includes (a score row's crafting time).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import TaskFailed
from ..labels import budget_label
from ..data import load_out_distribution
from ..diversity import defense_kappa
from ..metrics import OUT_DISTRIBUTION_ATTACK, row_metrics
from ..plan import Task
from ..plan.entries import on_surface
from ..plan.specs import (DEPLOYED, CheckNoiseSpec, CleanScoreSpec, CraftSpec, OutDistributionRef,
                          OutDistributionScoreSpec, ProbeSpec, ScoreSpec, TrainSpec)
from ..registry import attacks, task_steps
from ..store import Store, examples_digest
from ..training import predict
from .context import RunContext, attacked_indices, build_defense, seeded_randomness, task_seed, trained_defense
from .check_steps import run_check_noise, run_probe
from .result_rows import CLEAN, Attacked, result_row, wrong_class_flags


@task_steps.register("train", version=TrainSpec.version, table=None, artifact=True)
def run_train(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """Train a defense (dataset, defense config, seed) and store its checkpoint."""
    spec: TrainSpec = task.spec
    defense, data = build_defense(task, ctx)
    defense.data_context = ctx.data  # for a defense that loads a second dataset (dustbin: out-distribution)
    # Other defenses' trained models it reads (Defense.defense_references), e.g. the dustbin's features_from.
    defense.references = {param: trained_defense(upstream[key], ctx)[0] for param, key in spec.references.items()}
    defense.fit(data, seed=spec.seed, progress=ctx.progress)
    store.save_artifact(task.key, defense.state_dict())
    return []


def run_craft(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """Craft adversarial examples of one attack and budget on a trained defense's surface."""
    return run_craft_fused([task], upstream, ctx, store)[0]


def run_craft_fused(tasks: list[Task], upstream: dict[str, Task], ctx: RunContext, store: Store
                    ) -> list[list[dict[str, Any]]]:
    """Craft tasks that differ only in budget (and so in key and seed), as one batch with a budget per
    example where the attack's backend takes one (``Attack.run_budgets``); each task's artifact is the
    one it would have crafted alone (the bench.runner.scheduler fuses them)."""
    spec: CraftSpec = tasks[0].spec
    defense, data = trained_defense(upstream[spec.model], ctx)
    idx = attacked_indices(tasks[0], upstream, data, ctx)
    x, y = data.test_x[idx], data.test_y[idx]
    attack = attacks.get(spec.attack.name).build(**spec.attack.params)
    model = defense.surface(spec.surface)
    seeds = [task_seed(task) for task in tasks]
    targets = [attack.make_targets(model, x, y, seed=seed) for seed in seeds]
    with _craft_progress(tasks, ctx) as bar:
        if len(tasks) == 1:  # the plain call: what every backend and plugin attack implements
            crafted = [attack.run(model, x, y, spec.budget, targets=targets[0], batch_size=ctx.batch_size,
                                  device=ctx.device, seed=seeds[0], progress=bar)]
        else:
            crafted = attack.run_budgets(model, x, y, [t.spec.budget for t in tasks], seeds=seeds,
                                         targets=targets, batch_size=ctx.batch_size, device=ctx.device)
    for task, x_adv, task_targets in zip(tasks, crafted, targets):
        x_adv = x_adv.detach().cpu().float()
        if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
            raise TaskFailed(f"attack returned {tuple(x_adv.shape)} for inputs {tuple(x.shape)} or non-finite values")
        artifact = {"x_adv": x_adv, "indices": idx}
        if task_targets is not None:
            artifact["targets"] = task_targets.cpu()
        store.save_artifact(task.key, artifact)
    return [[] for _ in tasks]


task_steps.register("craft", version=CraftSpec.version, table=None, artifact=True, fused=run_craft_fused)(run_craft)


def _craft_progress(tasks: list[Task], ctx: RunContext) -> Any:
    """A progress bar of a craft task's batches, labelled ``craft pgd-linf eps=0.3 on gauss-0.3`` (the
    suite's attack label, the budget, the attacked defense's label and surface); none (None) without
    ``ctx.progress`` (``--quiet``, or no terminal)."""
    if not ctx.progress:
        return contextlib.nullcontext()
    task = tasks[0]
    spec: CraftSpec = task.spec
    name = spec.attack.name
    budget = budget_label(attacks.get(name).factory.budget_param, spec.budget, symbol=False)
    attack = task.about.attack or name  # the suite's label of the attack
    on = on_surface(task.about.defense or "", spec.surface)
    return tqdm(total=None, desc=f"craft {attack} {budget} on {on}", unit="batch", leave=False)


def run_score(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store) -> list[dict[str, Any]]:
    """One result row: a defense (or one of its surfaces) on the clean test split or on crafted examples."""
    return run_score_fused([task], upstream, ctx, store)[0]


def run_score_fused(tasks: list[Task], upstream: dict[str, Task], ctx: RunContext, store: Store
                    ) -> list[list[dict[str, Any]]]:
    """Score tasks of one trained defense and surface on several crafted sets (the bench.runner.scheduler
    fuses them): the checkpoint is loaded once, and the clean predictions of the attacked images are made
    once for all the sets that attacked the same images, where the defense is deterministic. Each crafted
    set is predicted in the batches it would get alone, so every row is the one its task would store alone."""
    clean_predictions: dict[tuple, torch.Tensor] = {}
    return [[_score_row(task, upstream, ctx, store, clean_predictions)] for task in tasks]


def _score_row(task: Task, upstream: dict[str, Task], ctx: RunContext, store: Store,
               clean_predictions: dict[tuple, torch.Tensor]) -> dict[str, Any]:
    spec: ScoreSpec = task.spec
    train = upstream[spec.model]
    defense, data = trained_defense(train, ctx)
    evaluated_on = spec.evaluated_on
    scorer = defense.surface(evaluated_on)
    device = torch.device(ctx.device)
    # A reject option's label (K): a rejected attacked example counts as defended, a rejected clean one
    # as an error (bench.metrics.REJECTION_CONVENTION); Acc./Rej./Err. keep the three apart.
    reject_class = defense.spec.num_classes if defense.has_reject_class else None
    attacked, indices = True, None
    if isinstance(spec, OutDistributionScoreSpec):  # no class is right: only a rejection is
        x = _out_distribution_test(spec.out_distribution, ctx)
        y = torch.full((len(x),), -1, dtype=torch.int64)
        x_adv, targets, craft_time = x, None, 0.0
        what = Attacked(OUT_DISTRIBUTION_ATTACK, spec.out_distribution.payload())
    elif isinstance(spec, CleanScoreSpec):  # clean accuracy on the whole test split
        x, y = data.test_x, data.test_y
        x_adv, targets, craft_time = x, None, 0.0
        attacked = False
        what = CLEAN
    else:
        craft = upstream[spec.craft]
        crafted = store.load_artifact(craft.key)
        indices = crafted["indices"]
        x, y = data.test_x[indices], data.test_y[indices]
        x_adv, targets = crafted["x_adv"], crafted.get("targets")
        craft_time = (store.task(craft.key) or {}).get("wall_time_s") or 0.0
        crafting: CraftSpec = craft.spec
        attack_cls = attacks.get(crafting.attack.name).factory
        about = task.about
        what = Attacked(about.attack, crafting.attack.payload(), str(attack_cls.threat_model), about.surface,
                        about.source, attack_cls.budget_param, crafting.budget)
    row = result_row(task, train.spec, what, evaluated_on=evaluated_on)
    repeats = spec.repeats
    # The clean pass of images another crafted set of this job attacked too: the same predictions, unless
    # the defense draws randomness (then every task draws its own, seeded by its key).
    shared = None if defense.stochastic or indices is None else (evaluated_on, repeats, indices.numpy().tobytes())
    # A stochastic defense draws from torch's global generator: seeded per task, so a rerun repeats exactly.
    with seeded_randomness(task_seed(task), device):
        pred_clean = clean_predictions.get(shared) if shared is not None else None
        if pred_clean is None:
            pred_clean = torch.stack([predict(scorer, x, device=device, batch_size=ctx.batch_size)
                                      for _ in range(repeats)])
            if shared is not None:
                clean_predictions[shared] = pred_clean
        pred_adv = pred_clean if x_adv is x else torch.stack(
            [predict(scorer, x_adv, device=device, batch_size=ctx.batch_size) for _ in range(repeats)])
    # Several repeats: means over them; an example counts as correct only if it is in every repeat.
    row.update(row_metrics(x.numpy(), x_adv.numpy(), y.numpy(), pred_clean.numpy(), pred_adv.numpy(),
                           None if targets is None else targets.numpy(), reject_class=reject_class,
                           attacked=attacked))
    row.update(wrong_class_flags(pred_adv, y, defense.spec.num_classes, reject_class))
    if evaluated_on == DEPLOYED:  # diversity of the members' votes on the scored inputs
        row.update(defense_kappa(defense, x_adv, y, device))
    if indices is not None:
        row["examples"] = examples_digest(indices)
        row["example_indices"] = indices.numpy()
    row["upstream_wall_time_s"] = craft_time
    return row


task_steps.register("score", version=ScoreSpec.version, table="results", fused=run_score_fused)(run_score)


def _out_distribution_test(ref: OutDistributionRef, ctx: RunContext) -> torch.Tensor:
    """The test images of a dataset entry's ``out_distribution`` (a random ``test_size`` subset, seeded)."""
    out = load_out_distribution(ref.name, ref.params, ref.exclude_classes, ctx.data)
    x = out.test_x
    if ref.test_size is not None and ref.test_size < len(x):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(ref.subset_seed))
        x = x[order[: ref.test_size].sort().values]
    return x


# The soundness checks' own evidence (bench.checks): a probe of clean passes and input gradients, and noise.
task_steps.register("probe", version=ProbeSpec.version, table="results")(run_probe)
task_steps.register("check-noise", version=CheckNoiseSpec.version, table="results")(run_check_noise)
