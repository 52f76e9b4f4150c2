"""``advbench bench attacks``: each attack through the harness against a baseline, same model, same samples.

Baselines, run in the same process:

* FGSM, BIM and PGD: a bare PyTorch loop (the fastest thing one could write);
  target: the harness at >= 0.85x its throughput.
* C&W-L2, EAD and DeepFool: ART's numpy implementation with the same
  hyperparameters; target for C&W and EAD: >= 10x faster at equal or better
  strength (robust accuracy no higher, median L2 of successful examples no larger).
* AutoAttack's members: ART's versions (``autoattack_cases``) and, where torchattacks is installed (optional,
  not a dependency), torchattacks' (``torchattacks_cases``; ``--attacks torchattacks`` selects them).

Every row gives the baseline's robust accuracy with its 95% Wilson interval, whether the harness lies above
it (weaker), below it (stronger) or inside, and how many examples only one of the two fooled.

``advbench bench ensembles`` (``run_ensemble_benchmark``): an ensemble's members in a Python loop vs
batched in one vmap call, forward and input gradient.

``advbench bench numerics`` (``run_numerics_benchmark``): the undefended CNN trained in fresh processes
with native and portable CPU numerics (bench/numerics.py) at 1 and 2 threads: whether the weights are
equal, and portable's cost.

Timings are the best of ``repeats`` runs after a warm-up, alternating harness
and baseline, so a background hiccup does not decide a ratio. The model is the Strauss et al. Table 1 CNN
trained briefly on the embedded MNIST.

Each command prints its table and writes it as data (``write_results``): ``<out>/<name>.csv`` and
``<out>/<name>.json`` (the rows plus where and how they were measured), by default beside the
leaderboard in ``leaderboard/benchmarks/``, so the measurements behind each attack's default backend
are a file, not only a comment.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

from .data import DataContext, load_dataset
from .numerics import PORTABLE_ENV, numerics_mode
from .provenance import git_commit, package_versions
from .models import build_architecture
from .registry import attacks
from .training import TrainConfig, predict, train_classifier


def write_results(name: str, rows: list[dict], out_dir: str | Path, merge_on: str | None = None,
                  **context) -> list[Path]:
    """``<out_dir>/<name>.csv`` (the table) and ``<name>.json`` (rows, context, versions, commit, time).

    ``merge_on``: a partial run's rows replace the existing table's rows with the same value in that column
    and the others are kept, so that remeasuring a few cases does not drop the rest; the json then lists
    every run that contributed rows ("runs", each with its context and the rows it measured)."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), **context, "git_commit": git_commit(),
           "versions": package_versions()}
    paths = [out / f"{name}.csv", out / f"{name}.json"]
    runs = [{**run, "rows": [r[merge_on] for r in rows]}] if merge_on else []
    if merge_on and paths[1].exists():
        earlier = json.loads(paths[1].read_text(encoding="utf-8"))
        new = {r[merge_on]: r for r in rows}
        kept = [r for r in earlier["rows"] if r.get(merge_on) not in new]
        rows = [new.pop(r[merge_on]) if r[merge_on] in new else r for r in earlier["rows"]] + list(new.values())
        previous = earlier.get("runs") or [{k: v for k, v in earlier.items() if k not in ("rows", "benchmark")}
                                           | {"rows": [r.get(merge_on) for r in earlier["rows"]]}]
        still = {r.get(merge_on) for r in kept}
        runs = [{**p, "rows": [k for k in p["rows"] if k in still]} for p in previous] + runs
        runs = [p for p in runs if p["rows"]]
        same = lambda a, b: {k: v for k, v in a.items() if k not in ("rows", "measured_at", "until")} == \
            {k: v for k, v in b.items() if k not in ("rows", "measured_at", "until")}  # noqa: E731
        if len(runs) >= 2 and same(runs[-2], runs[-1]):  # rows of one run, written as they come: one entry
            runs[-2:] = [{**runs[-2], "rows": runs[-2]["rows"] + runs[-1]["rows"], "until": runs[-1]["measured_at"]}]
    record = {"benchmark": name, **run, "rows": rows, **({"runs": runs} if merge_on else {})}
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # integers stay integers where a row from another run lacks the column
        values = [r[column] for r in rows if r.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
    frame.to_csv(paths[0], index=False)
    paths[1].write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {paths[0]} and {paths[1]}")
    return paths


def bare_pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
                  random_start: bool) -> torch.Tensor:
    """The reference loop: sign-gradient ascent on cross-entropy, projected onto the eps ball."""
    x_adv = x + torch.empty_like(x).uniform_(-eps, eps) if random_start else x.clone()
    x_adv = x_adv.clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


@dataclass
class Case:
    name: str                     # row label
    attack: str                   # registry name
    params: dict
    budget: float | None
    baseline_name: str
    baseline: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    target: str                   # what the issue asks of the ratio
    baseline_n: int | None = None  # run the baseline on fewer examples when it is very slow


def _art_baseline(factory: Callable) -> Callable:
    def run(model, x, y):
        from .adapters import to_art

        classifier = to_art(model, tuple(x.shape[1:]), 10, x.device)
        out = factory(classifier).generate(x.cpu().numpy(), y=np.eye(10, dtype=np.float32)[y.cpu().numpy()])
        return torch.from_numpy(out)
    return run


def cases(device: str) -> list[Case]:
    from art.attacks.evasion import CarliniL2Method, DeepFool, ElasticNet

    return [
        Case("fgsm eps=0.1", "fgsm", {}, 0.1, "bare PyTorch",
             lambda m, x, y: bare_pgd_linf(m, x, y, 0.1, 0.1, 1, False), ">= 0.85x"),
        Case("bim eps=0.2 a=0.025 n=8", "bim", {"steps": 8, "step_size": 0.025}, 0.2, "bare PyTorch",
             lambda m, x, y: bare_pgd_linf(m, x, y, 0.2, 0.025, 8, False), ">= 0.85x"),
        Case("pgd-linf eps=0.3 40 steps", "pgd-linf", {"steps": 40, "rel_stepsize": 0.01 / 0.3}, 0.3,
             "bare PyTorch", lambda m, x, y: bare_pgd_linf(m, x, y, 0.3, 0.01, 40, True), ">= 0.85x"),
        # Each library at its own learning-rate default: Adam in tanh space (harness, 0.1) vs ART's line search
        # starting at 0.01 (see CarliniWagnerL2's docstring); steps, searches and c are equal.
        *[Case(f"pgd-linf eps=0.3 40 steps [{lib}]", "pgd-linf",
               {"steps": 40, "rel_stepsize": 0.01 / 0.3, "backend": lib}, 0.3, "bare PyTorch",
               lambda m, x, y: bare_pgd_linf(m, x, y, 0.3, 0.01, 40, True), ">= 0.85x") for lib in ("foolbox", "art")],
        Case("cw-l2 c=1 50x3", "cw-l2", {"steps": 50, "binary_search_steps": 3}, 1.0,
             "ART CarliniL2Method",
             _art_baseline(lambda clf: CarliniL2Method(clf, confidence=0.0, learning_rate=0.01,
                                                       binary_search_steps=3, max_iter=50, initial_const=1.0,
                                                       batch_size=256, verbose=False)),
             ">= 10x, equal strength", baseline_n=64),
        # The plain-PyTorch C&W (for surfaces with their own objective, e.g. a folded-in detector) against
        # the Foolbox run it mirrors, at equal settings.
        Case("cw-l2 c=1 50x3 [torch]", "cw-l2", {"steps": 50, "binary_search_steps": 3, "backend": "torch"}, 1.0,
             "Foolbox L2CarliniWagnerAttack",
             lambda m, x, y: attacks.get("cw-l2").build(steps=50, binary_search_steps=3).run(
                 m, x, y, 1.0, batch_size=len(x), device=x.device, seed=0),
             "equal strength"),
        Case("ead c=1 50x3", "ead", {"steps": 50, "binary_search_steps": 3, "learning_rate": 0.01, "beta": 0.01},
             1.0, "ART ElasticNet",
             _art_baseline(lambda clf: ElasticNet(clf, confidence=0.0, learning_rate=0.01, binary_search_steps=3,
                                                  max_iter=50, beta=0.01, initial_const=1.0, batch_size=256,
                                                  decision_rule="EN", verbose=False)),
             ">= 10x, equal strength", baseline_n=64),
        Case("deepfool 50 steps", "deepfool", {"steps": 50, "overshoot": 0.02, "candidates": 10}, None,
             "ART DeepFool",
             _art_baseline(lambda clf: DeepFool(clf, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=256,
                                                verbose=False)),
             "faster", baseline_n=64),
        *autoattack_cases(),
        *torchattacks_cases(),
    ]


def _harness(name: str, params: dict, budget: float) -> Callable:
    """A baseline that is another backend of a registered attack, run through the harness."""
    return lambda m, x, y: attacks.get(name).build(**params).run(m, x, y, budget, batch_size=len(x),
                                                                 device=x.device, seed=0)


def _members_alone(name: str, params: dict, budget: float) -> Callable:
    """AutoAttack's members each run alone on every example, their per-example worst case taken after."""
    def run(m, x, y):
        out, done = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for member in attacks.get(name).build(**params).members(params["version"]):
            adv = member.run(m, x, y, budget, batch_size=len(x), device=x.device, seed=0).to(x.device)
            new = (predict(m, adv, device=x.device) != y.cpu()).to(x.device) & ~done
            out[new], done = adv[new], done | new
        return out
    return run


def autoattack_cases() -> list[Case]:
    """AutoAttack's members: the plain-PyTorch loops against ART's versions at AutoAttack's settings (100
    APGD steps, 1 restart; Square's p_init 0.8), and AutoAttack (members on the survivors) against its members
    each run on every example."""
    aa = {"version": "standard", "steps": 100, "square_queries": 1000}
    return [
        *[Case(f"{name} eps={eps} 100 steps", name, {"steps": 100}, eps, "ART AutoProjectedGradientDescent",
               _harness(name, {"steps": 100, "backend": "art"}, eps), "equal strength")
          for name, eps in (("apgd-ce", 0.1), ("apgd-dlr", 0.1), ("apgd-ce-l2", 1.0), ("apgd-dlr-l2", 1.0))],
        *[Case(f"{name} eps={eps} 1000 queries", name, {"queries": 1000}, eps, "ART SquareAttack",
               _harness(name, {"queries": 1000, "backend": "art"}, eps), "equal strength", baseline_n=64)
          for name, eps in (("square", 0.1), ("square-l2", 1.0))],
        Case("apgd-t eps=0.1 100 steps x 9 targets", "apgd-t", {"steps": 100}, 0.1, "apgd-ce (same steps)",
             _harness("apgd-ce", {"steps": 100}, 0.1), "stronger"),
        Case("fab-t eps=0.1 100 steps x 9 targets", "fab-t", {"steps": 100}, 0.1, "apgd-ce (same steps)",
             _harness("apgd-ce", {"steps": 100}, 0.1), "-"),
        Case("autoattack eps=0.1 standard", "autoattack", aa, 0.1, "members each on all examples",
             _members_alone("autoattack", aa, 0.1), "faster, equal strength"),
        Case("autoattack-l2 eps=1.0 standard", "autoattack-l2", aa, 1.0, "members each on all examples",
             _members_alone("autoattack-l2", aa, 1.0), "faster, equal strength", baseline_n=64),
    ]


TORCHATTACKS_SUFFIX = " [vs torchattacks]"  # tells these rows from the ART ones in --attacks and the table


def _torchattacks_baseline(make: Callable) -> Callable:
    """A torchattacks attack built on the model at each call (it takes the model's device), run on (x, y)."""
    return lambda m, x, y: make(m)(x, y).detach()


def torchattacks_cases() -> list[Case]:
    """The harness's AutoAttack members against torchattacks (Kim 2020, "Torchattacks: A PyTorch Repository
    for Adversarial Attacks"), a port of fra31/auto-attack, at the settings of ``autoattack_cases``: 100
    steps, 1 restart, the top 9 rival classes (n_classes=10), Square's p_init 0.8 and 1000 queries, seed 0.
    torchattacks is optional and not a dependency: without it these cases are absent. ``AutoAttack`` as
    torchattacks ships it runs 10 steps per gradient member (its members' default) and Square with 5000
    queries, so it is measured twice: members at the harness's settings (a ``MultiAttack``), and as
    shipped against the harness at its defaults."""
    try:
        import torchattacks as ta
    except ImportError:
        return []

    def members(m, norm: str, eps: float, steps: int, queries: int) -> list:
        return [ta.APGD(m, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce"),
                ta.APGDT(m, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=0, n_classes=10),
                ta.FAB(m, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=0, multi_targeted=True, n_classes=10),
                ta.Square(m, norm=norm, eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, loss="margin", seed=0)]

    out = []
    for suffix, norm, eps in (("", "Linf", 0.1), ("-l2", "L2", 1.0)):
        def case(label: str, attack: str, params: dict, baseline: str, make: Callable) -> Case:
            return Case(label + TORCHATTACKS_SUFFIX, attack + suffix, params, eps, f"torchattacks {baseline}",
                        _torchattacks_baseline(make), "equal strength")

        aa = {"version": "standard", "steps": 100, "square_queries": 1000}
        out += [
            *[case(f"apgd-{loss}{suffix} eps={eps} 100 steps", f"apgd-{loss}", {"steps": 100}, f"APGD(loss='{loss}')",
                   lambda m, loss=loss, norm=norm, eps=eps: ta.APGD(m, norm=norm, eps=eps, steps=100, n_restarts=1,
                                                                     seed=0, loss=loss))
              for loss in ("ce", "dlr")],
            case(f"apgd-t{suffix} eps={eps} 100 steps x 9 targets", "apgd-t", {"steps": 100}, "APGDT",
                 lambda m, norm=norm, eps=eps: members(m, norm, eps, 100, 1000)[1]),
            case(f"fab-t{suffix} eps={eps} 100 steps x 9 targets", "fab-t", {"steps": 100}, "FAB(multi_targeted)",
                 lambda m, norm=norm, eps=eps: members(m, norm, eps, 100, 1000)[2]),
            case(f"square{suffix} eps={eps} 1000 queries", "square", {"queries": 1000}, "Square",
                 lambda m, norm=norm, eps=eps: members(m, norm, eps, 100, 1000)[3]),
            case(f"autoattack{suffix} eps={eps} standard", "autoattack", aa,
                 "MultiAttack of its members, same settings",
                 lambda m, norm=norm, eps=eps: ta.MultiAttack(members(m, norm, eps, 100, 1000))),
            # As shipped: 10 APGD/APGD-T/FAB steps, 5000 Square queries; the harness at its defaults.
            case(f"autoattack{suffix} eps={eps} standard, defaults", "autoattack", {"version": "standard"},
                 "AutoAttack(version='standard') as shipped",
                 lambda m, norm=norm, eps=eps: ta.AutoAttack(m, norm=norm, eps=eps, version="standard", n_classes=10,
                                                             seed=0)),
        ]
    return out


Output = TypeVar("Output")


def interleaved_best(runs: dict[str, Callable[[], Output]], repeats: int) -> dict[str, tuple[float, Output]]:
    """Best wall time of each run (and its output) over ``repeats`` rounds, alternating between them so that a
    slow stretch of the machine (another process, frequency scaling) hits all of them alike."""
    best: dict[str, tuple[float, Output]] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, out)
    return best


def _strength(model, x, x_adv, y, device) -> tuple[float, float]:
    x_adv = x_adv.to(x.device)
    pred = predict(model, x_adv, device=device)
    fooled = pred != y.cpu()
    l2 = (x_adv - x).flatten(1).norm(dim=1).cpu()[fooled]
    return float((~fooled).float().mean()), float(l2.median()) if len(l2) else float("nan")


def _selected(case: Case, only: list[str] | None) -> bool:
    """``--attacks``: a case runs when its registry name or its row label is listed; ``torchattacks`` selects
    every torchattacks row."""
    return (not only or case.attack in only or case.name in only
            or ("torchattacks" in only and case.name.endswith(TORCHATTACKS_SUFFIX)))


def compare_strength(model, x, adv_h, adv_b, y, device) -> dict[str, str]:
    """Harness vs baseline on the same examples: the baseline's robust accuracy with its 95% Wilson interval,
    whether the harness's robust accuracy lies above that interval (weaker), below it (stronger) or inside
    it, and how many examples only one of them fooled (where the implementations disagree)."""
    from .metrics import wilson_interval

    fooled_h = predict(model, adv_h.to(x.device), device=device) != y.cpu()
    fooled_b = predict(model, adv_b.to(x.device), device=device) != y.cpu()
    n, robust_h, robust_b = len(y), int((~fooled_h).sum()), int((~fooled_b).sum())
    low, high = wilson_interval(robust_b, n)
    verdict = ("weaker" if robust_h / n > high else "stronger" if robust_h / n < low else "equal") + " (95%)"
    return {"baseline robust acc 95% CI": f"[{low:.3f}, {high:.3f}]", "harness vs baseline": verdict,
            "fooled only by h/b": f"{int((fooled_h & ~fooled_b).sum())} / {int((fooled_b & ~fooled_h).sum())}"}


def trained_model(device: torch.device, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = load_dataset("mnist5k", {}, DataContext("data"))
    torch.manual_seed(seed)
    model = build_architecture("strauss-mnist", data.input_spec())
    train_classifier(model, data.train_x, data.train_y, TrainConfig(epochs=2), seed=seed, device=device,
                     progress=False)
    return model.eval(), data.test_x, data.test_y


def run_attack_benchmark(n: int = 256, device: str = "cpu", only: list[str] | None = None,
                         repeats: int = 5, out_dir: str | Path | None = None) -> list[dict]:
    dev = torch.device(device)
    model, test_x, test_y = trained_model(dev)
    correct = predict(model, test_x, device=dev) == test_y
    x, y = test_x[correct][:n], test_y[correct][:n]
    print(f"model: strauss-mnist, 2 epochs on mnist5k; {len(x)} correctly classified test images; device {device}; "
          f"torch threads {torch.get_num_threads()}; best of {repeats}")
    context = dict(device=device, n=len(x), repeats=repeats, model="strauss-mnist, 2 epochs on mnist5k")
    rows = []
    for case in cases(device):
        if not _selected(case, only):
            continue
        attack = attacks.get(case.attack).build(**case.params)
        nb = case.baseline_n or len(x)
        xb, yb = x[:nb].to(dev), y[:nb].to(dev)
        harness = lambda: attack.run(model, x, y, case.budget, batch_size=len(x), device=dev, seed=0)
        baseline = lambda: case.baseline(model, xb, yb)
        if case.baseline_n or repeats == 1:  # one run each (a slow library baseline, or minutes per run)
            attack.run(model, x[:8], y[:8], case.budget, batch_size=8, device=dev, seed=0)  # warm-up
            timed = interleaved_best({"harness": harness, "baseline": baseline}, 1)
        else:  # warm both on the full batch (kernel selection), then alternate
            harness(), baseline()
            timed = interleaved_best({"harness": harness, "baseline": baseline}, repeats)
        (t_h, adv_h), (t_b, adv_b) = timed["harness"], timed["baseline"]
        # Strength on the examples both ran on.
        acc_h, l2_h = _strength(model, x[:nb], adv_h[:nb], y[:nb], dev)
        acc_b, l2_b = _strength(model, xb.cpu(), adv_b.cpu(), yb.cpu(), dev)
        tp_h, tp_b = len(x) / t_h, nb / t_b
        rows.append({
            "attack": case.name, "harness backend": attack.backend, "harness ex/s": round(tp_h, 1),
            "baseline": case.baseline_name, "baseline ex/s": round(tp_b, 1), "ratio": round(tp_h / tp_b, 2),
            "target": case.target, "robust acc h/b": f"{acc_h:.3f} / {acc_b:.3f}",
            "median L2 h/b": f"{l2_h:.3f} / {l2_b:.3f}", "timed runs": 1 if case.baseline_n else repeats,
            **compare_strength(model, xb.cpu(), adv_h[:nb], adv_b.cpu(), yb.cpu(), dev),
        })
        print(tabulate([rows[-1]], headers="keys", tablefmt="plain"), flush=True)
        if out_dir is not None and only:  # each row as it is measured: an interrupted run keeps what it had
            write_results("attacks", rows[-1:], out_dir, merge_on="attack", **context)
    print()
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if out_dir is not None and not only:  # a whole table: written once, whole
        write_results("attacks", rows, out_dir, **context)
    return rows


def run_ensemble_benchmark(members: tuple[int, ...] | list[int] = (3, 10), n: int = 256, device: str = "cpu",
                           repeats: int = 5, out_dir: str | Path | None = None) -> list[dict]:
    """``advbench bench ensembles``: an ensemble's members in a Python loop vs batched (one vmap call).

    For each member count, a random-init ensemble of Strauss MNIST nets (``defenses/ensemble.py``), timed on
    ``n`` test images: the deployed forward pass (mean softmax, no grad), and the input gradient of the
    mean member loss (the ``mean-gradient`` surface's ``attack_loss``: one Grad. 2 / BIM step). The members
    are untrained (setup only): dense convolutions and matrix products cost the same for any weights.
    Loop and batched runs alternate, best of ``repeats`` after a warm-up; "max |diff|" compares their outputs.
    """
    from defenses.ensemble import MeanGradient

    from .registry import defenses

    dev = torch.device(device)
    data = load_dataset("mnist5k", {}, DataContext("data"))
    x, y = data.test_x[:n].to(dev), data.test_y[:n].to(dev)
    print(f"random-init ensembles of strauss-mnist; {len(x)} mnist5k test images; device {device}; "
          f"torch threads {torch.get_num_threads()}; best of {repeats}")
    rows = []
    for m in members:
        ensemble = defenses.get("ensemble").build(method="random-init", members=m, arch="strauss-mnist")
        ensemble.setup(data.input_spec(), seed=0, device=dev)
        models = ensemble.member_models()
        surfaces = {"loop": MeanGradient(models, batched=False).eval(),
                    "batched": MeanGradient(models, batched=True).eval()}
        assert surfaces["batched"].batched and not surfaces["loop"].batched

        def forward(surface):
            with torch.no_grad():
                return surface(x)

        def input_gradient(surface):
            x_var = x.clone().requires_grad_(True)
            return torch.autograd.grad(surface.attack_loss(x_var, y), x_var)[0]

        for label, fn in (("forward (deployed)", forward), ("input gradient (mean member loss)", input_gradient)):
            runs = {name: (lambda s=s: fn(s)) for name, s in surfaces.items()}
            for run in runs.values():  # warm-up: kernel selection, allocator
                run()
            timed = interleaved_best(runs, repeats)
            (t_loop, out_loop), (t_batched, out_batched) = timed["loop"], timed["batched"]
            rows.append({
                "members": m, "pass": label, "loop ex/s": round(len(x) / t_loop, 1),
                "batched ex/s": round(len(x) / t_batched, 1), "ratio batched/loop": round(t_loop / t_batched, 2),
                "max |diff|": f"{(out_batched - out_loop).abs().max().item():.1e}",
            })
            print(tabulate([rows[-1]], headers="keys", tablefmt="plain"), flush=True)
    print()
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if out_dir is not None:
        write_results("ensembles", rows, out_dir, device=device, n=len(x), repeats=repeats,
                      model="random-init ensembles of strauss-mnist (untrained)")
    return rows


# ---- ``advbench bench numerics``: the measurement behind bench/numerics.py --------------------------------

# (label, environment, torch threads): each probe trains in a fresh process, since the kernels a process
# uses are fixed when torch loads (the environment is set before the child starts).
NUMERICS_PROBES = (("native", {}, 1), ("native", {}, 2), ("portable", PORTABLE_ENV, 1),
                   ("portable", PORTABLE_ENV, 2), ("no-vector ATen", {"ATEN_CPU_CAPABILITY": "default"}, 2))


def numerics_probe(threads: int, epochs: int) -> dict:
    """Train the mnist-quick undefended CNN in this process; its weights' hash, clean accuracy and time."""
    import hashlib

    from .registry import defenses

    torch.set_num_threads(threads)
    data = load_dataset("mnist5k", {"test_fraction": 0.2}, DataContext("data"))
    defense = defenses.get("undefended").build(epochs=epochs, batch_size=64)
    defense.setup(data.input_spec(), seed=0, device=torch.device("cpu"))
    start = time.perf_counter()
    defense.fit(data, seed=0, progress=False)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for name, tensor in sorted(defense.deployed().state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    pred = predict(defense.deployed(), data.test_x, device=torch.device("cpu"), batch_size=500)
    return {"weights_sha256": digest.hexdigest()[:16],
            "clean_acc": round(float((pred == data.test_y).float().mean()), 4),
            "train_s": round(seconds, 2), "aten_isa": torch.backends.cpu.get_cpu_capability(),
            "numerics": numerics_mode()}


def run_numerics_benchmark(*, epochs: int = 2, repeats: int = 2, out_dir: str | Path | None = None) -> list[dict]:
    """Each probe in its own process, alternating, best time of ``repeats``: does the weights' hash depend on
    the thread count and the ISA in each mode, and what does portable cost against native at equal threads?"""
    import subprocess
    import sys

    best: dict[int, dict] = {}
    for _ in range(repeats):
        for i, (label, env, threads) in enumerate(NUMERICS_PROBES):
            child_env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
            child_env.update(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            out = subprocess.run([sys.executable, "-m", "bench.benchmark", "numerics-probe", str(threads), str(epochs)],
                                 env=child_env, capture_output=True, text=True, check=True).stdout
            row = {"probe": label, "threads": threads, **json.loads(out.strip().splitlines()[-1])}
            if i in best and row["weights_sha256"] != best[i]["weights_sha256"]:
                raise RuntimeError(f"{label} with {threads} threads gave other weights on a rerun")
            best[i] = min(best.get(i, row), row, key=lambda r: r["train_s"])
    rows = [best[i] for i in range(len(NUMERICS_PROBES))]
    native = {r["threads"]: r["train_s"] for r in rows if r["probe"] == "native"}
    for r in rows:
        r["time / native"] = round(r["train_s"] / native[r["threads"]], 2)
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(f"undefended CNN, {epochs} epoch(s) on mnist5k; best of {repeats} alternating runs, each in its own process")
    if out_dir is not None:
        write_results("numerics", rows, out_dir, epochs=epochs, repeats=repeats)
    return rows


if __name__ == "__main__" and sys.argv[1:2] == ["numerics-probe"]:  # a child of run_numerics_benchmark
    print(json.dumps(numerics_probe(int(sys.argv[2]), int(sys.argv[3]))))
