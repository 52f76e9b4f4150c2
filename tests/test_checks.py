"""Soundness checks (bench.checks): each of the seven fires on a constructed case and stays quiet on a plain model.

The constructed cases are tiny models on sklearn's 8x8 digits: a non-differentiable rounding step in the
forward (zero gradients, an attack that cannot move, noise and transfer that can), a model with noise at test
time scored once, and an iterative attack whose steps cannot reach its budget. Their rows are made by the real
attacks, the probe of ``bench.runner.check_steps`` and ``bench.metrics``, then judged by ``checks.evaluate``.
"""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
import torch
from torch import nn

from bench import checks
from bench.attacks import get_attack
from bench.config import load_suite
from bench.metrics import cell_metrics
from bench.plan import build_plan
from bench.report import compute_leaderboard, render_html, render_markdown
from bench.runner.check_steps import NOISE, probe
from bench.training import predict
from tests.conftest import trained_defense

N = 120  # attacked examples (the harness's check tasks attack 200)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def plain(digits):
    """A plainly trained CNN on the digits (eval mode)."""
    return trained_defense(digits, "undefended", epochs=4, batch_size=64).deployed().eval()


@pytest.fixture(scope="module")
def examples(digits):
    return digits.test_x[:N], digits.test_y[:N]


class Rounded(nn.Module):
    """The model behind a rounding of its input to ``levels`` grey levels: no gradient reaches the input."""

    def __init__(self, model: nn.Module, levels: int = 2):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * (self.levels - 1)) / (self.levels - 1))


class Noisy(nn.Module):
    """The model behind Gaussian input noise that stays on at test time: a stochastic defense."""

    def __init__(self, model: nn.Module, std: float = 0.5):
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x):
        return self.model(x + torch.randn_like(x) * self.std)


def _row(defense: str, model: nn.Module, x, y, x_adv=None, *, attack: str = "none", params: dict | None = None,
         budget: float | None = None, source: str = "white-box", threat_model: str = "linf", repeats: int = 1,
         seed: int = 0) -> dict:
    """A results row as the score step writes it (the fields the checks read)."""
    x_adv = x if x_adv is None else x_adv
    torch.manual_seed(seed)
    preds = torch.stack([predict(model, x_adv, device=CPU) for _ in range(repeats)])
    clean = predict(model, x, device=CPU)
    metrics = cell_metrics(x.numpy(), x_adv.numpy(), y.numpy(), clean.numpy(), preds[0].numpy()).as_dict()
    metrics["robust_acc"] = float((preds == y).float().mean())  # the mean over repeats
    return {**metrics, "dataset": "digits", "defense": defense, "defense_name": defense, "evaluated_on": "deployed",
            "attack": attack, "attack_config": json.dumps({"name": attack, "params": params or {}}),
            "threat_model": threat_model, "correct": (preds == y).all(0).numpy(),
            "surface": "deployed", "source": source, "budget": budget, "seed": 0, "repeats": repeats,
            "created_at": "2026-01-01T00:00:00+00:00"}


def _attacked(defense: str, model: nn.Module, x, y, name: str, budget: float, *, source: str = "white-box",
              craft_on: nn.Module | None = None, label: str | None = None, **params) -> dict:
    attack = NOISE[name](draws=checks.NOISE_DRAWS) if name in NOISE else get_attack(name, params)
    x_adv = attack.run(craft_on or model, x, y, budget, seed=0)
    row = _row(defense, model, x, y, x_adv, attack=name, params=params, budget=budget, source=source,
               threat_model=str(attack.threat_model))
    if source in (checks.UNBOUNDED, checks.STRONGER, checks.SINGLE_STEP):  # as the plan labels them
        label = checks.check_label(name, source)
    return {**row, "attack": label or name}


def _probe_row(defense: str, model: nn.Module, x, y) -> dict:
    first, found = probe(model, x, y, passes=checks.PROBE_PASSES, vanishing_below=checks.VANISHING_GRADIENT,
                         device=CPU, batch_size=128, seed=0)
    row = _row(defense, model, x, y)
    return {**row, "attack": checks.PROBE_ATTACK, "source": checks.PROBE, "threat_model": "none",
            "attack_config": json.dumps({"name": checks.PROBE_ATTACK, "params": {}, "found": found})}


def _evidence(defense: str, model: nn.Module, x, y, *, steps: int = 5, eps: float = 0.3, step_size=None,
              transfer_from: nn.Module | None = None) -> list[dict]:
    """The suite's rows (BIM, FGSM, a transfer FGSM) and the check rows the harness would add."""
    bim = {"steps": steps, "step_size": step_size}
    rows = [_attacked(defense, model, x, y, "bim", eps, **bim),
            _attacked(defense, model, x, y, "fgsm", eps),
            _attacked(defense, model, x, y, "bim", 1.0, source=checks.UNBOUNDED, **checks.unbounded_params(bim)),
            _attacked(defense, model, x, y, "bim", eps, source=checks.STRONGER, **checks.stronger_params(bim)),
            _attacked(defense, model, x, y, "noise-linf", eps, source=checks.NOISE),
            _probe_row(defense, model, x, y)]
    if transfer_from is not None:
        rows.append(_attacked(defense, model, x, y, "fgsm", eps, source="transfer:plain", craft_on=transfer_from,
                              label="fgsm-transfer"))
    return rows


@pytest.fixture(scope="module")
def plain_rows(plain, examples):
    return _evidence("plain", plain, *examples, transfer_from=plain)


@pytest.fixture(scope="module")
def rounded_rows(plain, examples):
    return _evidence("rounded", Rounded(plain), *examples, transfer_from=plain)


def _failed(rows: list[dict]) -> dict[int, checks.Verdict]:
    verdicts = checks.evaluate(pd.DataFrame(rows))
    return {v.check.number: v for v in verdicts if v.failed}


def test_a_plainly_trained_model_passes_every_check(plain_rows):
    verdicts = checks.evaluate(pd.DataFrame(plain_rows))
    decided = {v.check.number for v in verdicts}
    assert decided == {1, 2, 3, 4, 5, 6, 7}, "every check had evidence to decide on"
    assert not [v.text() for v in verdicts if v.failed]


def test_a_rounding_step_in_the_forward_fails_the_gradient_checks(rounded_rows):
    """Zero gradients everywhere: BIM cannot move even unbounded, noise and a transfer attack break it."""
    failed = _failed(rounded_rows)
    assert {2, 5, 6, 7} <= set(failed), sorted(failed)
    gradients = failed[7].evidence[0]
    assert gradients.hits == gradients.n == N, "no gradient reaches the input through the rounding"
    assert failed[2].evidence[0].share > 0.5, "unbounded, accuracy stays near clean"
    # The evidence names the two numbers compared, with n and intervals.
    assert "noise-linf" in failed[6].text() and f"n={N}" in failed[6].text() and "[" in failed[6].text()


def test_an_argmax_in_the_forward_has_no_gradient_at_all(plain, examples):
    """An output that is not a differentiable function of the input: the probe counts zero gradients."""

    class OneHot(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(plain(x).argmax(1), 10).float()

    x, y = examples
    _, found = probe(OneHot(), x, y, passes=2, vanishing_below=checks.VANISHING_GRADIENT, device=CPU,
                     batch_size=128, seed=0)
    assert found["zero_gradient"] == N and found["disagree"] == 0


def test_a_stochastic_model_scored_once_is_flagged_and_with_eot_and_repeats_is_not(plain, examples):
    x, y = examples
    noisy = Noisy(plain)
    once = [_attacked("noisy", noisy, x, y, "pgd-linf", 0.1, steps=5), _probe_row("noisy", noisy, x, y)]
    failed = _failed(once)
    assert 1 in failed and "no EOT attack" in failed[1].detail
    assert failed[1].evidence[0].hits >= 2
    # Scored with repeated predictions and attacked with EOT: check 1 is satisfied.
    eot = get_attack("pgd-linf", {"steps": 5, "eot": 4})
    x_adv = eot.run(noisy, x, y, 0.1, seed=0)
    sound = [_row("noisy", noisy, x, y, x_adv, attack="pgd-linf", params={"steps": 5, "eot": 4}, budget=0.1,
                  repeats=5), once[1]]
    assert 1 not in _failed(sound)
    # The plain model is deterministic: its probe says so.
    plain_once = [_attacked("plain", plain, x, y, "pgd-linf", 0.1, steps=5), _probe_row("plain", plain, x, y)]
    assert 1 not in _failed(plain_once)


def test_an_iterative_attack_that_cannot_reach_its_budget_fails_the_convergence_checks(plain, examples):
    """BIM with 2 steps of eps/10 moves at most eps/5: FGSM (one full step) and 4x the steps both beat it."""
    x, y = examples
    failed = _failed([r for r in _evidence("plain", plain, x, y, steps=2, step_size=0.03)
                      if r["source"] != checks.UNBOUNDED])
    assert {3, 4} <= set(failed), sorted(failed)
    reported, stronger = failed[3].evidence
    assert "as reported" in reported.label and f"{2 * checks.STEPS_FACTOR} steps" in stronger.label
    assert checks.beats(stronger, reported)


def test_beats_needs_the_intervals_apart_not_the_points():
    small = checks.Evidence("a", 8, 20), checks.Evidence("b", 12, 20)  # 40% vs 60% of 20: overlapping intervals
    assert not checks.beats(*small)
    large = checks.Evidence("a", 400, 1000), checks.Evidence("b", 600, 1000)
    assert checks.beats(*large) and not checks.beats(large[1], large[0])


def test_the_plan_adds_cheap_check_tasks_without_changing_any_suite_key(write_suite):
    suite_text = textwrap.dedent("""\
        name: tiny
        datasets: [{name: digits, eval_size: 300}]
        defenses: [{name: undefended, params: {epochs: 1}}]
        attacks:
          - {name: bim, params: {steps: 8, step_size: 0.025}, budgets: [0.1, 0.2]}
          - {name: pgd-l2, params: {steps: 5}, budgets: [1.0]}
        headline: {linf: 0.1}
        """)
    with_checks = build_plan(load_suite(write_suite(suite_text)))
    without = build_plan(load_suite(write_suite(suite_text + "checks: false\n", name="off.yaml")))
    assert set(without.keys) < set(with_checks.keys), "checks add tasks; every suite task keeps its key"
    extra = [t for t in with_checks.tasks if t.key not in set(without.keys)]
    scored = {(t.info["source"], t.info.get("attack_name", t.info["attack"]), t.info["budget"]) for t in extra
              if t.kind in ("score", "check-noise")}
    assert scored == {(checks.UNBOUNDED, "bim", 1.0), (checks.STRONGER, "bim", 0.1), (checks.NOISE, "noise-linf", 0.1),
                      (checks.SINGLE_STEP, "fgsm", 0.1), (checks.UNBOUNDED, "pgd-l2", 8.0),
                      (checks.STRONGER, "pgd-l2", 1.0), (checks.NOISE, "noise-l2", 1.0)}
    crafts = {t.config["attack"]["name"] + str(t.config["budget"]): t.config for t in extra if t.kind == "craft"}
    assert crafts["bim1.0"]["attack"]["params"]["step_size"] is None, "unbounded: steps that can cross the ball"
    assert crafts["bim0.1"]["attack"]["params"]["steps"] == 8 * checks.STEPS_FACTOR
    assert all(c["eval"]["eval_size"] == checks.CHECK_EXAMPLES for c in crafts.values())
    assert len([t for t in extra if t.kind == "probe"]) == 1


def test_a_flagged_row_carries_the_mark_in_markdown_and_html(plain_rows, rounded_rows):
    rows = [dict(row) for row in plain_rows + rounded_rows]
    for row in rows:
        row.update(suite="s", key=f"{row['defense']}-{row['attack']}-{row['source']}-{row['budget']}",
                   budget_param="eps", defense_config=row["defense"])
    board = compute_leaderboard(pd.DataFrame(rows), settings={"s": {"headline": {"linf": 0.3}}})
    (section,) = board.datasets
    main = next(t for t in section.tables if t.setting == "L∞, white-box")
    labels = list(main.frame["Defense"])
    assert any(label.startswith("rounded ⚠") for label in labels) and "plain" in labels
    headline = next(c for c in main.frame.columns if c.startswith("Headline"))
    assert main.frame.loc[labels.index(next(lb for lb in labels if lb.startswith("rounded"))), headline].endswith(
        checks.mark(checks.flags(checks.evaluate(pd.DataFrame(rows)))[("digits", "rounded", "linf")]))
    headings = [t.setting for t in section.tables]
    assert "soundness checks" in headings and "soundness checks failed" in headings
    failed = section.tables[headings.index("soundness checks failed")].frame
    assert set(failed["Defense"]) == {"rounded"} and failed["Run next"].str.len().min() > 10
    assert not any(str(a).startswith("noise") for a in main.frame.columns), \
        "check rows are evidence, not table columns"
    markdown, html = render_markdown(board), render_html(board)
    assert "rounded ⚠" in markdown and "rounded ⚠" in html and "soundness checks failed" in html


def test_a_suite_run_stores_the_evidence_and_its_leaderboard_shows_the_verdicts(write_suite, tmp_path):
    from bench.cli import main
    from bench.store import Store

    suite = write_suite("""\
        name: checked
        device: cpu
        datasets: [{name: digits, eval_size: 60}]
        defenses: [{name: undefended, params: {epochs: 3, batch_size: 64}}]
        attacks: [{name: pgd-linf, params: {steps: 3}, budgets: [0.3]}]
        """)
    assert main(["run", str(suite), "--store", str(tmp_path / "s"), "--leaderboard", str(tmp_path / "lb"),
                 "--quiet"]) == 0
    results = Store(tmp_path / "s").results()
    sources = set(results["source"])
    assert {checks.UNBOUNDED, checks.STRONGER, checks.NOISE, checks.SINGLE_STEP, checks.PROBE} <= sources
    probe_row = results[results["source"] == checks.PROBE].iloc[0]
    found = json.loads(probe_row["attack_config"])["found"]
    assert found["n"] == 60 and found["disagree"] == 0 and found["zero_gradient"] == 0
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "### soundness checks" in readme and "noise-linf" not in readme.split("### soundness checks")[0]
    assert "Produced by advbench (bench.report) from 2 stored results" in readme, "check rows are not table rows"
