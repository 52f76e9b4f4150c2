"""Per-example indices and perturbation sizes: written with every scored row, and filled into an older store's
rows on its next run from their crafted examples, with nothing re-run and no key or number changed."""

from __future__ import annotations

import sqlite3

import numpy as np

from bench.cli import main
from bench.report.best_known import best_known, collect
from bench.report.rows import dedupe, normalize
from bench.store import Store

SUITE = """\
name: tiny-norms
seeds: [0]
device: cpu
batch_size: 128
checks: false
datasets:
  - name: digits
    eval_size: 40
defenses:
  - name: undefended
    params: {epochs: 2, batch_size: 64}
attacks:
  - name: pgd-linf
    params: {steps: 5, rel_stepsize: 0.5}
    budgets: [0.1]
  - name: cw-l2
    params: {steps: 20, binary_search_steps: 2, backend: torch}
    budgets: [1.0]
"""
COLUMNS = ("example_indices", "perturbation_l2", "perturbation_linf")


def test_rows_keep_their_norms_and_an_older_store_gets_them_without_rerunning(write_suite, tmp_path, capsys):
    suite, store_dir, board = write_suite(SUITE), tmp_path / "s", tmp_path / "lb"
    args = ["run", str(suite), "--store", str(store_dir), "--leaderboard", str(board), "--quiet"]
    assert main(args) == 0
    store = Store(store_dir)
    before = store.results()
    attacked = before[before["attack"] != "none"].set_index("attack")
    cw = attacked.loc["cw-l2"]
    assert (cw["example_indices"] == attacked.loc["pgd-linf", "example_indices"]).all()
    assert cw["perturbation_l2"].shape == (40,) and (cw["perturbation_l2"][~cw["correct"]] > 0).any()
    assert attacked.loc["pgd-linf", "perturbation_linf"].max() <= 0.1 + 1e-6  # within its budget

    # C&W's budget is c, not a distance: it counts at each ε exactly where its broken examples' L2 sizes fit.
    evidence = collect(dedupe(normalize(before)))[("digits", "undefended")]
    broken = ~cw["correct"]
    for eps in (0.5, 1.0, 2.0):
        expected = int((~(broken & (cw["perturbation_l2"] <= eps * (1 + 1e-5)))).sum())
        assert best_known(evidence, "l2", eps).hits == expected

    # A store from before the columns: the next run fills them from the crafted examples and runs nothing.
    store.close()
    with sqlite3.connect(store_dir / Store.DB_NAME) as db:
        db.execute(f"UPDATE results SET {', '.join(f'{c} = NULL' for c in COLUMNS)}")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 stored rows got their per-example indices and perturbation sizes" in out
    assert "0 run, 6 already stored" in out  # train, 2 crafts, 3 scores: none re-run
    after = Store(store_dir).results().set_index("key")
    before = before.set_index("key")
    assert list(after.index.sort_values()) == list(before.index.sort_values())
    for key in before.index:
        assert after.at[key, "robust_acc"] == before.at[key, "robust_acc"]
        for column in COLUMNS:
            old, new = before.at[key, column], after.at[key, column]
            assert (old is None and new is None) or np.array_equal(old, new), (key, column)
