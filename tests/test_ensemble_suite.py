"""Ensembles through the harness: member, mean-gradient and deployed surfaces, single vs ensemble scoring."""

import sqlite3

import pytest

from bench.cli import main

ENSEMBLE_SUITE = """\
name: ens
device: cpu
datasets:
  - name: digits
    eval_size: 80
defenses:
  - name: ensemble
    label: bagging
    params: {method: bagging, members: 3, epochs: 3, batch_size: 64}
attacks:
  - name: bim
    label: grad1
    surface: member:0                 # Grad. 1: one member's gradient ...
    evaluate_on: [member:0, deployed] # ... scored on that member alone and on the ensemble
    params: {steps: 4}
    budgets: [0.2]
  - name: bim
    label: grad2
    surface: mean-gradient            # Grad. 2: the average of the members' gradients
    params: {steps: 4}
    budgets: [0.2]
  - name: bim
    label: adaptive
    surface: deployed                 # the ensemble's own averaged softmax
    params: {steps: 4}
    budgets: [0.2]
"""


def test_ensemble_surfaces_and_single_vs_ensemble_rows(write_suite, tmp_path):
    suite = write_suite(ENSEMBLE_SUITE)
    code = main(["run", str(suite), "--store", str(tmp_path / "s"), "--leaderboard", str(tmp_path / "lb"), "--quiet"])
    assert code == 0
    with sqlite3.connect(tmp_path / "s" / "advbench.sqlite") as db:
        rows = db.execute("SELECT attack, surface, evaluated_on, robust_acc, clean_acc, diversity_kappa "
                          "FROM results").fetchall()
    cells = {(a, s, e): (acc, clean, kappa) for a, s, e, acc, clean, kappa in rows}
    # clean on the ensemble and on member 0 (the paper's "No attack" single/ensemble columns)
    assert {("none", "", "deployed"), ("none", "", "member:0")} <= set(cells)
    single = cells[("grad1", "member:0", "member:0")][0]
    on_ensemble = cells[("grad1", "member:0", "deployed")][0]
    assert single < on_ensemble, "a member's own BIM fools it more than it fools the ensemble"
    assert cells[("adaptive", "deployed", "deployed")][0] <= on_ensemble
    assert ("grad2", "mean-gradient", "deployed") in cells
    # interrater agreement is recorded for the multi-member defense when it is scored as an ensemble
    kappa = cells[("none", "", "deployed")][2]
    assert kappa is not None and -1.0 <= kappa <= 1.0
    assert cells[("none", "", "member:0")][2] is None
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "bagging [member:0]" in readme


def test_unknown_evaluation_surface_is_a_user_error(write_suite, tmp_path, capsys):
    suite = write_suite(ENSEMBLE_SUITE.replace("evaluate_on: [member:0, deployed]", "evaluate_on: [member:7]"))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "attacks[0].evaluate_on[0]" in err and "member:7" in err


@pytest.mark.parametrize("attack, hint", [
    ("    params: {steps: 4, backend: foolbox}", "set backend: torch"),
    ("    params: {steps: 4, backend: art}", "set backend: torch"),
])
def test_own_loss_surface_needs_the_torch_backend_at_validation(write_suite, attack, hint, capsys):
    text = ENSEMBLE_SUITE.replace("    surface: mean-gradient            # Grad. 2: the average of the members' gradients\n"
                                  "    params: {steps: 4}", "    surface: mean-gradient\n" + attack)
    assert text != ENSEMBLE_SUITE
    assert main(["validate", str(write_suite(text))]) == 2
    err = capsys.readouterr().err
    assert "attacks[1].surface: 'bagging'" in err and "defines its own loss" in err and hint in err


def test_own_loss_surface_with_an_attack_lacking_torch(write_suite, capsys):
    text = ENSEMBLE_SUITE.replace("  - name: bim\n    label: grad2", "  - name: deepfool\n    label: grad2")
    assert main(["validate", str(write_suite(text))]) == 2
    assert "use an attack with a torch backend (this one has foolbox, art)" in capsys.readouterr().err


def test_leaderboard_has_the_papers_table_layouts(write_suite, tmp_path):
    suite = write_suite(ENSEMBLE_SUITE.replace("  - name: ensemble\n", "  - name: undefended\n    params: {epochs: 3}\n"
                                               "    label: single\n  - name: ensemble\n", 1)
                        .replace("    surface: member:0                 # Grad. 1", "    defenses: [bagging]\n"
                                 "    surface: member:0                 # Grad. 1")
                        .replace("    surface: mean-gradient ", "    defenses: [bagging]\n    surface: mean-gradient "))
    assert main(["run", str(suite), "--store", str(tmp_path / "s"), "--leaderboard", str(tmp_path / "lb"),
                 "--quiet"]) == 0
    from bench.store import Store
    from bench.report.views import defense_comparison_view, ensemble_view

    results = Store(tmp_path / "s").results()
    table2 = ensemble_view(results)
    row = table2.loc[("bim ε=0.2", "bagging")]
    stored = results.set_index(["defense", "attack", "evaluated_on"])
    assert row["Grad. 1 single"] == stored.loc[("bagging", "grad1", "member:0"), "robust_acc"]
    assert row["Grad. 2 ensemble"] == stored.loc[("bagging", "grad2", "deployed"), "robust_acc"]
    assert row["No attack ensemble"] == stored.loc[("bagging", "none", "deployed"), "robust_acc"]
    table4 = defense_comparison_view(results)
    # the ensemble is compared under Grad. 2, the single model under its own white-box attack
    assert table4.loc["bagging", "bim ε=0.2"] == row["Grad. 2 ensemble"]
    assert table4.loc["single", "bim ε=0.2"] == stored.loc[("single", "adaptive", "deployed"), "robust_acc"]
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "Strauss et al. Table 2 layout" in readme and "Strauss et al. Table 4 layout" in readme
