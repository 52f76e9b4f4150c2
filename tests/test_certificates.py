"""The certificates track (issue 27): planning, validation, the store's certificates table, the leaderboard's
[certified, best known] columns and soundness check 8.

A tiny suite on sklearn's digits (an MLP, PGD at two budgets, IBP) runs once per module through the CLI; the
tests read its store and leaderboard, then tamper with a stored certificate to construct a wrong one.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.config import load_suite
from bench.plan import build_plan
from bench.report import compute_leaderboard
from bench.store import Store

SUITE = """\
name: certified-digits
seeds: [0]
device: cpu
batch_size: 250
checks: false
headline: {linf: 0.05}
datasets:
  - {name: digits, eval_size: 60}
defenses:
  - {name: undefended, params: {epochs: 3, batch_size: 64, arch: monteiro-mlp}}
  - {name: ibp-trained, label: ibp, params: {eps: 0.05, epochs: 4, batch_size: 64, arch: monteiro-mlp}}
  - {name: rse, params: {epochs: 1, batch_size: 64}}
attacks:
  - {name: pgd-linf, label: pgd, params: {steps: 20}, budgets: [0.02, 0.05], defenses: [undefended, ibp]}
  - {name: fgsm, budgets: [0.05], defenses: [rse]}
certificates:
  - {name: ibp}
"""


def _best_table(section):
    return next(t for t in section.tables if t.setting == "best known robust accuracy, L∞")


def _check_8(section) -> dict[str, str]:
    """Defense -> its check-8 cell in the section's soundness-checks overview ("ok", "⚠8")."""
    overview = next(t for t in section.tables if t.setting == "soundness checks").frame
    return dict(zip(overview["Defense"], overview["8 certificates"]))


def _board(store_dir, **kwargs):
    store = Store(store_dir, readonly=True)
    try:
        return compute_leaderboard(store.results(), certificates=store.certificates(),
                                   settings=store.suite_settings(), **kwargs)
    finally:
        store.close()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("certified")
    suite = root / "suite.yaml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--store", str(root / "store"), "--leaderboard", str(root / "lb"),
                 "--quiet"]) == 0
    return root


def test_the_plan_certifies_each_deterministic_defense_at_its_attack_budgets(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    tasks = [t for t in build_plan(load_suite(path)).tasks if t.kind == "certify"]
    assert sorted(t.about.defense for t in tasks) == ["ibp", "undefended"], "rse draws randomness: not IBP's"
    for t in tasks:
        assert t.spec.threat_model == "linf" and t.spec.budgets == (0.02, 0.05)
        assert t.spec.eval.eval_size == 60 and t.deps == [t.spec.model]


@pytest.mark.parametrize("entry, message", [
    ("{name: ibpp}", "certificates[0].name: unknown certificate method 'ibpp'"),
    ("{name: smoothing, threat_model: linf}", "certificates[0].threat_model: smoothing certifies l2, not linf"),
    ("{name: ibp, defenses: [rse]}", "certificates[0].defenses: cannot certify 'rse': ibp certifies deterministic"),
    ("{name: ibp, defenses: [nope]}", "certificates[0].defenses: unknown defense label 'nope'"),
    ("{name: smoothing, params: {alpha: 0.7}}", "certificates[0].params: alpha must be in (0, 0.5)"),
    ("{name: ibp, eval_size: 100}", "certificates[0].eval_size: 100 examples, more than dataset 'digits'"),
])
def test_a_bad_certificate_entry_is_one_message_naming_file_and_key(tmp_path, capsys, entry, message):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.replace("  - {name: ibp}", f"  - {entry}"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {message}" in err, err


def test_certificate_rows_are_stored_per_budget_with_per_example_flags(ran):
    frame = Store(ran / "store", readonly=True).certificates()
    assert sorted(zip(frame["defense"], frame["budget"])) == [("ibp", 0.02), ("ibp", 0.05), ("undefended", 0.02),
                                                              ("undefended", 0.05)]
    for row in frame.to_dict("records"):
        assert row["n"] == 60 and len(row["correct"]) == 60 and len(row["example_indices"]) == 60
        assert row["certified"] == int(row["correct"].sum()) <= row["clean_correct"]
        assert row["method"] == "ibp" and pd.isna(row["unsupported"])
    by = {(r["defense"], r["budget"]): r["certified"] for r in frame.to_dict("records")}
    assert by[("ibp", 0.02)] >= by[("ibp", 0.05)], "a certificate at a larger budget is one at every smaller"
    assert by[("ibp", 0.05)] > by[("undefended", 0.05)], "IBP training is what makes IBP certify"


def test_the_best_known_table_shows_certified_at_most_best_known_with_its_gap(ran):
    board = _board(ran / "store")
    (section,) = board.datasets
    table = _best_table(section)
    frame = table.frame.set_index("Defense")
    for defense in ("ibp", "undefended"):
        low, high = (float(v) for v in frame.loc[defense, "Certified ≤ best known"].strip("[]").split(", "))
        assert low <= high
        assert frame.loc[defense, "Gap"] == f"{high - low:.1f}"
        assert frame.loc[defense, "Certified by"] == "ibp"
        assert frame.loc[defense, "Certified"].startswith(f"{low:.1f} [")
    assert frame.loc["rse", "Certified"] == "—", "not certified: no number"
    entries = {(e.best.defense, e.best.eps): e for e in board.best_known}
    assert entries[("ibp", 0.05)].certified.acc <= entries[("ibp", 0.05)].best.acc
    numbers = (ran / "lb" / "numbers.csv").read_text()
    assert numbers.count(",certified,") == 2, "each certified number is in numbers.csv with its interval"


def test_check_8_passes_on_sound_certificates_and_flags_a_constructed_wrong_one(ran, tmp_path):
    board = _board(ran / "store")
    assert _check_8(board.datasets[0]) == {"ibp": "ok", "undefended": "ok"}
    # A wrong certificate: certify, at 0.05, every example PGD broke at 0.02 on the undefended model.
    store = Store(ran / "store", readonly=True)
    results = store.results()
    broken_row = results[(results["defense"] == "undefended") & (results["budget"] == 0.02)].iloc[0]
    broken = broken_row["example_indices"][~broken_row["correct"]]
    assert len(broken) > 0
    copy = tmp_path / "store"
    copy.mkdir()
    db = sqlite3.connect(copy / Store.DB_NAME)
    sqlite3.connect(ran / "store" / Store.DB_NAME).backup(db)
    for key, blob in db.execute("SELECT key, example_indices FROM certificates WHERE defense = 'undefended' "
                                "AND budget = 0.05").fetchall():
        indices = np.frombuffer(blob, dtype=np.int64)
        flags = np.isin(indices, broken)
        db.execute("UPDATE certificates SET correct = ?, certified = ? WHERE key = ?",
                   (np.packbits(flags).tobytes(), int(flags.sum()), key))
    db.commit()
    db.close()
    board = _board(copy)
    (section,) = board.datasets
    assert _check_8(section) == {"ibp": "ok", "undefended": "⚠8"}
    failed = next(t for t in section.tables if t.setting == "soundness checks failed").frame
    (detail,) = failed.loc[failed["Defense"] == "undefended", "Evidence"]
    assert f"{len(broken)} certified by ibp at ε=0.05 broken by pgd ε=0.02" in detail
    assert str(int(sorted(broken)[0])) in detail, "the verdict names the test images"
    assert any(str(d).startswith("undefended ⚠8") for d in _best_table(section).frame["Defense"])


def test_every_committed_certified_number_is_at_most_its_best_known_one():
    """The committed leaderboard (CI's output): no certificate claims more than the attacks left standing."""
    from pathlib import Path

    numbers = pd.read_csv(Path(__file__).resolve().parents[1] / "leaderboard" / "numbers.csv")
    what = ["suite", "dataset", "defense", "threat_model", "budget"]
    certified = numbers[numbers["metric"] == "certified"]
    best = numbers[numbers["metric"] == "best_known"].set_index(what)["value"]
    for row in certified.to_dict("records"):
        assert row["value"] <= best.loc[tuple(row[c] for c in what)], row
