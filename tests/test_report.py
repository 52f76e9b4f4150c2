"""Tests of bench.report on a hand-built results frame with hand-computed numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.metrics import wilson_interval
from bench.report import build_leaderboard, compute_leaderboard, leaderboard_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LEGEND = "toy — rows: each label's registry entry, its non-default parameters, version and seeds"  # the heading of a section's row legend


def _row(defense: str, attack: str, budget: float | None, correct: list[int], *, seed: int = 0,
         dataset: str = "toy", source: str = "white-box", threat_model: str = "linf",
         with_array: bool = True) -> dict:
    """One store row; every number is derived from `correct` so the test states only that."""
    correct_arr = np.asarray(correct, dtype=bool)
    n = correct_arr.size
    clean = attack == "none"
    acc = correct_arr.mean()
    low, high = wilson_interval(int(correct_arr.sum()), n)
    return {
        "suite": "unit", "dataset": dataset, "defense": defense,
        "defense_name": defense.lower(), "defense_config": json.dumps({"name": defense}),
        "attack": attack, "attack_config": json.dumps({"name": attack}),
        "threat_model": "none" if clean else threat_model, "surface": "deployed", "source": source,
        "budget_param": "" if clean else "eps", "budget": math.nan if budget is None else budget,
        "seed": seed, "n": n, "clean_acc": 0.9, "robust_acc": acc,
        "robust_ci_low": low, "robust_ci_high": high, "attack_success_rate": None if clean else 0.5,
        "l2_mean": 1.0, "l2_median": 0.9, "linf_mean": budget, "linf_median": budget,
        "mse_mean": 0.01, "mse_median": 0.01, "wall_time_s": 1.5,
        "versions": json.dumps({"torch": "2.3.0", "advbench": "0.1.0"}), "git_commit": "abc1234",
        "key": f"k-{defense}-{attack}-{budget}-{seed}", "created_at": f"2024-05-0{seed + 1}T12:00:00+00:00",
        "correct": correct_arr if with_array else None,
    }


# Per-example correctness, hand-picked so that at each budget the worst case (AND)
# is strictly below both attacks: they break different examples.
ZETA = {  # the more robust defense, deliberately last alphabetically
    ("pgd", 0.1): [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],   # 70.0
    ("fgsm", 0.1): [0, 1, 1, 1, 1, 1, 1, 1, 1, 0],  # 80.0 -> AND 6/10 = 60.0
    ("pgd", 0.3): [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],   # 40.0
    ("fgsm", 0.3): [0, 0, 1, 1, 1, 1, 1, 0, 0, 0],  # 50.0 -> AND 2/10 = 20.0
}
ALPHA = {
    ("pgd", 0.1): [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],   # 50.0
    ("fgsm", 0.1): [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],  # 60.0 -> AND 1/10 = 10.0
    ("pgd", 0.3): [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],   # 20.0
    ("fgsm", 0.3): [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],  # 30.0 -> AND 0/10 = 0.0
}


def _frame(zeta_label: str = "Zeta") -> pd.DataFrame:
    rows = [_row(zeta_label, "none", None, [1] * 18 + [0] * 2),  # clean 90.0
            _row("Alpha", "none", None, [1] * 17 + [0] * 3)]     # clean 85.0
    for label, cells in ((zeta_label, ZETA), ("Alpha", ALPHA)):
        rows += [_row(label, attack, budget, correct) for (attack, budget), correct in cells.items()]
    return pd.DataFrame(rows)


def _md_table(readme: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the markdown table right under `### heading`."""
    lines = readme.splitlines()
    start = lines.index(f"### {heading}") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, _rule, *rows = table
    return header, rows


@pytest.fixture
def board_dir(tmp_path):
    out = tmp_path / "leaderboard"
    paths = build_leaderboard(_frame(), out)
    return out, paths


def test_readme_table_numbers_worst_case_and_sort_order(board_dir):
    out, paths = board_dir
    readme = (out / "README.md").read_text(encoding="utf-8")
    header, rows = _md_table(readme, "L∞, white-box")
    # The headline (worst case at the largest budget every attack ran at) comes first; its worst-case
    # column is not repeated.
    assert header == ["Defense", "Clean", "Headline: worst case ε=0.3", "fgsm ε=0.1", "fgsm ε=0.3", "pgd ε=0.1",
                      "pgd ε=0.3", "Worst case ε=0.1"]
    # Zeta (headline 20.0) ranks above Alpha (0.0) although Alpha comes first alphabetically.
    assert [r[0] for r in rows] == ["Zeta", "Alpha"]

    def ci(hits):
        low, high = wilson_interval(hits, 10)
        return f"[{100 * low:.1f}, {100 * high:.1f}]"

    assert rows[0] == ["Zeta", "90.0", f"20.0 {ci(2)}", "80.0", "50.0", "70.0", "40.0", "60.0"]
    assert rows[1] == ["Alpha", "85.0", f"0.0 {ci(0)}", "60.0", "30.0", "50.0", "20.0", "10.0"]
    assert out / "README.md" in paths and out / "index.html" in paths


def test_readme_header_and_details_trace_to_store(board_dir):
    out, _ = board_dir
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# advbench leaderboard\n")
    assert "from 10 stored results of suite unit" in readme
    assert "commit abc1234" in readme and "torch 2.3.0" in readme
    header, rows = _md_table(readme, "Details: toy")
    by_cell = {(r[1], r[2], r[3]): dict(zip(header, r)) for r in rows}
    pgd = by_cell[("Zeta", "pgd", "ε=0.1")]
    low, high = wilson_interval(7, 10)
    assert pgd["n"] == "10" and pgd["Accuracy (%)"] == "70.0"
    assert pgd["95% CI (%)"] == f"{100 * low:.1f}–{100 * high:.1f}"
    assert pgd["Keys"] == "k-Zeta-pgd-0.1-0"
    worst = by_cell[("Zeta", "worst case (fgsm, pgd)", "ε=0.1")]
    assert worst["Accuracy (%)"] == "60.0"
    assert set(worst["Keys"].split(", ")) == {"k-Zeta-pgd-0.1-0", "k-Zeta-fgsm-0.1-0"}
    assert "![toy — L∞, white-box — pgd](plots/toy__linf__pgd.png)" in readme


def test_seeds_pool_counts_not_accuracies(tmp_path):
    # seed 0: 7/10, seed 1: 12/30 -> pooled 19/40 = 47.5 (mean of accuracies would be 55.0)
    frame = pd.DataFrame([
        _row("D", "pgd", 0.1, [1] * 7 + [0] * 3, seed=0),
        _row("D", "pgd", 0.1, [1] * 12 + [0] * 18, seed=1),
        _row("D", "fgsm", 0.1, [0] * 3 + [1] * 7, seed=0),        # AND with seed 0 pgd: 4/10
        _row("D", "fgsm", 0.1, [1] * 30, seed=1),                 # AND with seed 1 pgd: 12/30
    ])
    build_leaderboard(frame, tmp_path)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    header, rows = _md_table(readme, "L∞, white-box")
    cells = dict(zip(header, rows[0]))
    assert cells["pgd ε=0.1"] == "47.5"
    assert cells["fgsm ε=0.1"] == "92.5"  # 37/40
    assert cells["Headline: worst case ε=0.1"].startswith("40.0 [")  # (4 + 12) / 40
    low, high = wilson_interval(19, 40)
    header, rows = _md_table(readme, "Details: toy")
    pgd = next(dict(zip(header, r)) for r in rows if r[2] == "pgd")
    assert pgd["n"] == "40" and pgd["Seeds"] == "0, 1"
    assert pgd["95% CI (%)"] == f"{100 * low:.1f}–{100 * high:.1f}"


def test_worst_case_needs_per_example_arrays(tmp_path):
    frame = pd.DataFrame([
        _row("D", "pgd", 0.1, [1, 0], with_array=False),
        _row("D", "fgsm", 0.1, [0, 1]),
    ])
    tables = dict(leaderboard_tables(frame))
    row = tables["toy — L∞, white-box"].iloc[0]
    # Without the arrays the minimum (50.0) would be a guess that overstates robustness.
    assert row["pgd ε=0.1"] == "50.0" and row["Headline: worst case ε=0.1"] == "—"


def test_worst_case_needs_the_same_attacked_images():
    same = pd.DataFrame([{**_row("D", "pgd", 0.1, [1, 0, 1]), "examples": "aaaa"},
                         {**_row("D", "fgsm", 0.1, [1, 1, 0]), "examples": "aaaa"}])
    assert dict(leaderboard_tables(same))["toy — L∞, white-box"].iloc[0]["Headline: worst case ε=0.1"].startswith("33.3")
    # Equal lengths, other images (an attack on fewer or on other images): flags that do not line up.
    other = same.assign(examples=["aaaa", "bbbb"])
    row = dict(leaderboard_tables(other))["toy — L∞, white-box"].iloc[0]
    assert row["pgd ε=0.1"] == "66.7" and row["Headline: worst case ε=0.1"] == "—"


def test_transfer_gets_own_table_and_unbounded_label(tmp_path):
    frame = pd.DataFrame([
        _row("D", "pgd", 0.1, [1, 0]), _row("D", "pgd", 0.3, [0, 0]),
        _row("D", "pgd", 0.1, [1, 1], source="transfer:Undefended"),
        _row("D", "pgd", 0.3, [1, 0], source="transfer:Undefended"),
        _row("D", "cw", None, [0, 0], threat_model="l2"),
    ])
    headings = [h for h, _ in leaderboard_tables(frame)]
    # The section opens with its best-known table (no L2 one: cw's budget is no distance and it stored no norms).
    assert headings == ["toy — best known robust accuracy, L∞", "toy — L∞, white-box",
                        "toy — L∞, transfer from Undefended", "toy — L2, white-box", LEGEND, "toy — details"]
    tables = dict(leaderboard_tables(frame))
    # no clean rows stored: the Clean column, empty in every row, is dropped; cw has no budget: no headline
    assert list(tables["toy — L2, white-box"].columns) == ["Defense", "cw unbounded"]
    build_leaderboard(frame, tmp_path)
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    # The transfer plot must not overwrite the white-box one; unbounded-only attacks have no curve.
    assert pngs == ["toy__linf__pgd.png", "toy__linf__pgd__transfer-Undefended.png"]


def test_html_escapes_data(tmp_path):
    evil = "<script>alert(1)</script>"
    build_leaderboard(_frame(zeta_label=evil), tmp_path)
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page
    assert '<img src="plots/toy__linf__pgd.png"' in page
    assert "60.0" in page and "<h2>toy</h2>" in page
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "<script>" not in readme  # markdown renderers pass raw HTML through


def test_pngs_written_and_stale_ones_removed(tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "old__linf__gone.png").write_bytes(PNG_MAGIC)
    (plots / "notes.txt").write_text("not ours to delete")
    paths = build_leaderboard(_frame(), tmp_path)
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["toy__linf__fgsm.png", "toy__linf__pgd.png"]
    for name in pngs:
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) < 200_000
        assert plots / name in paths
    assert (plots / "notes.txt").exists()
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files behind


def test_clean_is_the_zero_budget_point_of_eps_plots():
    board = compute_leaderboard(_frame())
    plot = next(p for p in board.datasets[0].plots if p.filename == "toy__linf__pgd.png")
    label, xs, ys, lows, highs = plot.series[0]
    assert label == "Zeta" and xs == (0.0, 0.1, 0.3)
    assert ys == pytest.approx((90.0, 70.0, 40.0))
    assert all(lo <= y <= hi for lo, y, hi in zip(lows, ys, highs))
    assert plot.xlabel == "ε (eps)"


def test_newest_rerun_supersedes_older_row(tmp_path):
    old = _row("D", "pgd", 0.1, [0, 0])
    new = _row("D", "pgd", 0.1, [1, 1]) | {"created_at": "2024-06-01T00:00:00Z", "key": "k-new"}
    tables = dict(leaderboard_tables(pd.DataFrame([old, new])))
    # One attack at one budget: its column is the headline, with its interval (not repeated beside itself).
    assert tables["toy — L∞, white-box"].iloc[0]["pgd ε=0.1"] == "100.0 [34.2, 100.0]"


def test_empty_frame_says_no_results(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "stale.png").write_bytes(PNG_MAGIC)
    paths = build_leaderboard(pd.DataFrame(), tmp_path)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "No results yet" in readme
    assert tmp_path / "README.md" in paths
    assert not list((tmp_path / "plots").glob("*.png"))


def test_clean_rows_only_still_listed():
    frame = pd.DataFrame([_row("A", "none", None, [1, 0]), _row("B", "none", None, [1, 1])])
    heading, table = leaderboard_tables(frame)[0]
    assert heading == "toy — clean accuracy"
    assert table.values.tolist() == [["B", "100.0"], ["A", "50.0"]]


def _detection_rows() -> pd.DataFrame:
    """Hand-made detection rows: one attack's data row (an older store: no adversarial_fraction), CV rows of
    the detector and a baseline, a 2x2 cross matrix and an adaptive pair."""
    from bench.store import DETECTION_COLUMNS

    base = {"suite": "s", "dataset": "digits", "detector": "bimodel", "seed": 0, "created_at": "2026-01-01",
            "git_commit": "abc"}
    rows = [
        {**base, "key": "d1", "evaluation": "attack-data", "method": "", "train_attack": "<b>fgsm</b>",
         "test_attack": "<b>fgsm</b>", "n": 50, "attack_success_rate": 0.9, "mse_mean": 0.01,
         "adversarial_fraction": None},
        {**base, "key": "c1", "evaluation": "cv", "method": "bimodel", "train_attack": "<b>fgsm</b>",
         "test_attack": "<b>fgsm</b>", "n": 100, "folds": 5, "accuracy": 0.9, "accuracy_std": 0.01, "f1": 0.8,
         "f1_std": None, "roc_auc": 0.95, "roc_auc_std": 0.02, "detection_rate": 0.85, "detection_rate_std": 0.03,
         "tpr_at_fpr": 0.5, "tpr_at_fpr_std": 0.1, "target_fpr": 0.05, "clean_fpr": 0.04},
        {**base, "key": "c2", "evaluation": "cv", "method": "feature-squeezing", "train_attack": "<b>fgsm</b>",
         "test_attack": "<b>fgsm</b>", "n": 100, "folds": 5, "accuracy": 0.7, "target_fpr": 0.05},
        *[{**base, "key": f"x{a}{b}", "evaluation": "cross", "method": "bimodel", "train_attack": a,
           "test_attack": b, "accuracy": acc}
          for (a, b), acc in {("<b>fgsm</b>", "<b>fgsm</b>"): 0.91, ("<b>fgsm</b>", "noise"): 0.6,
                              ("noise", "<b>fgsm</b>"): None, ("noise", "noise"): 0.88}.items()],
        *[{**base, "key": f"a{e}", "evaluation": e, "method": "bimodel", "train_attack": "<b>fgsm</b>",
           "test_attack": "pgd", "budget": 0.1, "n": 40, "detection_rate": rate, "robust_acc": acc,
           "robust_ci_low": acc - 0.1, "robust_ci_high": acc + 0.1, "model_robust_acc": 0.2,
           "attack_success_rate": 1 - acc, "clean_acc": 0.9, "clean_rejected": 0.05}
          for e, rate, acc in (("non-adaptive", 0.8, 0.7), ("adaptive", 0.1, 0.3))],
    ]
    return pd.DataFrame([{c: r.get(c) for c in DETECTION_COLUMNS} for r in rows])


def test_detector_section_from_rows(tmp_path):
    paths = build_leaderboard(None, tmp_path, detections=_detection_rows())
    readme = (tmp_path / "README.md").read_text()
    html = (tmp_path / "index.html").read_text()
    assert "## digits — detector bimodel" in readme
    # Table II: the missing share shows as "—", the success rate as a percentage
    assert "| &lt;b&gt;fgsm&lt;/b&gt; |" in readme.replace("  ", " ").replace("  ", " ")
    assert "90.0" in readme and "—" in readme
    # Table III: mean ± std, a missing std shows the mean alone
    assert "0.900 ± 0.010" in readme and "| 0.800 " in readme.replace("  ", " ").replace("  ", " ")
    # the cross matrix: rows and columns in first-seen order, a missing cell as "—"
    matrix = next(t for h, t in leaderboard_tables(None, _detection_rows()) if "cross-attack accuracy of bimodel" in h)
    assert list(matrix.columns) == ["train \\ test", "<b>fgsm</b>", "noise"]
    assert matrix.iloc[1].tolist() == ["noise", "—", "0.880"]
    # adaptive rows: model only first, then detector-aware
    assert readme.index("| model only") < readme.index("| detector-aware (adaptive)")
    # escaping: the label is data, never markup
    assert "<b>fgsm</b>" not in html and "&lt;b&gt;fgsm&lt;/b&gt;" in html
    assert [p.name for p in paths if p.suffix == ".png"] == ["digits__detector__bimodel__cross__bimodel.png"]


def test_details_columns_come_from_the_metric_specs():
    from bench.metrics import RESULT_METRICS

    header = list(dict(leaderboard_tables(_frame()))["toy — details"].columns)
    assert header == ["Setting", "Defense", "Attack", "Budget", "Seeds", "n", "Accuracy (%)", "95% CI (%)",
                      "ASR (%)", "L2 median", "L∞ median", "Wall time (s)", "Keys"]
    # Every detail metric some row has; the repeated-prediction ones only where a stochastic defense is.
    repeated = {"repeats", "robust_acc_strict", "robust_acc_spread"}
    assert header[8:-1] == [m.label for m in RESULT_METRICS if m.detail and m.name not in repeated]


def test_views_come_from_the_registry_in_order(monkeypatch):
    from bench.registry import REGISTRIES, Entry, views
    from bench.report.views import registered_views

    assert REGISTRIES["views"] is views
    built_in = ["strauss-table-2", "strauss-table-4", "lee-table-2", "lee-table-4", "test-time-samples", "lee-table-5",
                "liu-cw", "abbasi-table-1"]
    assert [e.name for e in registered_views()] == built_in

    def count_view(dataset, results):
        from bench.report import Table

        frame = pd.DataFrame({"Defense": ["all"], "Rows": [str(len(results))]})
        return Table(f"{dataset} — rows", "rows", frame, ("left", "right"))

    # A view registered without an order (as a plugin's would be) comes after the built-in ones.
    monkeypatch.setitem(views._entries, "row-count", Entry("view", "row-count", count_view))
    assert [e.name for e in registered_views()] == [*built_in, "row-count"]
    tables = dict(leaderboard_tables(_frame()))
    assert list(tables) == ["toy — best known robust accuracy, L∞", "toy — L∞, white-box", "toy — rows", LEGEND,
                            "toy — details"]
    assert tables["toy — rows"].iloc[0].tolist() == ["all", "10"]


def test_two_configs_under_one_label_are_two_rows():
    """One suite, two configs both labelled Zeta: told apart by a config hash; worst cases stay per model."""
    import hashlib

    frame = _frame()
    other = frame[frame["defense"] == "Zeta"].copy()
    other["defense_config"] = json.dumps({"name": "Zeta", "params": {"epochs": 1}})
    other["key"] = other["key"] + "-other"
    # the second Zeta breaks every example: a worst case mixing the two would show it
    other["correct"] = [np.zeros_like(c) for c in other["correct"]]
    other["robust_acc"] = 0.0
    tables = dict(leaderboard_tables(pd.concat([frame, other], ignore_index=True)))
    main = next(t for heading, t in tables.items() if heading.startswith("toy — L∞"))
    labels = list(main["Defense"])
    tag = "#" + hashlib.sha256(json.dumps({"name": "Zeta"}).encode()).hexdigest()[:6]
    assert f"Zeta {tag}" in labels and len([x for x in labels if x.startswith("Zeta #")]) == 2
    row = main[main["Defense"] == f"Zeta {tag}"].iloc[0]
    assert row["Worst case ε=0.1"] == "60.0" and row["Headline: worst case ε=0.3"].startswith("20.0 [")


def test_one_config_per_label_keeps_the_label():
    tables = dict(leaderboard_tables(_frame()))
    main = next(t for heading, t in tables.items() if heading.startswith("toy — L∞"))
    assert set(main["Defense"]) == {"Zeta", "Alpha"}


def test_rows_rank_by_the_headline_not_the_mean():
    """A defense better on average but worse under the worst case ranks second; a row missing the
    headline is not ranked against the others; a column empty in every row is dropped."""
    frame = pd.DataFrame([
        _row("Mean-winner", "fgsm", 0.3, [1] * 10), _row("Mean-winner", "pgd", 0.3, [0] * 5 + [1] * 5),
        _row("Worst-winner", "fgsm", 0.3, [1] * 7 + [0] * 3), _row("Worst-winner", "pgd", 0.3, [1] * 7 + [0] * 3),
        _row("Alpha-partial", "fgsm", 0.3, [1] * 10),
    ])
    tables = dict(leaderboard_tables(frame))
    table = next(t for heading, t in tables.items() if heading.startswith("toy — L∞"))
    # mean 75 vs 70; headline (AND) 50 vs 70
    assert list(table["Defense"]) == ["Worst-winner", "Mean-winner", "Alpha-partial"]
    assert list(table["Headline: worst case ε=0.3"].str.split(" ").str[0]) == ["70.0", "50.0", "—"]
    assert "Clean" not in table.columns  # no clean rows were stored


def test_plots_need_two_budgets_and_at_most_six_lines(tmp_path):
    rows = [_row(f"D{i}", "pgd", b, [1, 0]) for i in range(8) for b in (0.1, 0.3)]
    rows += [_row("Single", "fgsm", 0.1, [1, 1]), _row("D0", "fgsm", 0.1, [1, 0])]  # fgsm: one budget only
    board = compute_leaderboard(pd.DataFrame(rows))
    plots = board.datasets[0].plots
    assert [p.filename for p in plots] == ["toy__linf__pgd__part1.png", "toy__linf__pgd__part2.png"]
    assert [len(p.series) for p in plots] == [6, 2] and plots[1].caption.endswith("(2 of 2)")
    assert all(len(series[1]) == 2 for p in plots for series in p.series)  # no clean point: none stored


def test_legend_names_each_label_with_its_non_default_parameters():
    from bench.registry import defenses

    params = defenses.get("gaussian-augment").validate({"std": 0.5})  # defaults filled in, as the plan stores
    frame = _frame()
    frame.loc[frame["defense"] == "Zeta", "defense_config"] = json.dumps(
        {"name": "gaussian-augment", "version": "1", "params": params})
    frame.loc[frame["defense"] == "Zeta", "seed"] = 3
    tables = dict(leaderboard_tables(frame))
    legend = next(t for heading, t in tables.items() if "registry entry" in heading)
    zeta = legend[legend["Label"] == "Zeta"].iloc[0]
    assert (zeta["Defense"], zeta["Parameters (non-default)"], zeta["Version"], zeta["Seeds"]) == \
        ("gaussian-augment", "std: 0.5", "1", "3")
    alpha = legend[legend["Label"] == "Alpha"].iloc[0]
    assert alpha["Defense"] == "Alpha" and alpha["Parameters (non-default)"] == "defaults"


def test_the_suite_names_its_headline_budget():
    board = compute_leaderboard(_frame(), settings={"unit": {"headline": {"linf": 0.1}}})
    table = next(t for t in board.datasets[0].tables if t.setting == "L∞, white-box")
    columns = list(table.frame.columns)
    assert columns[:3] == ["Defense", "Clean", "Headline: worst case ε=0.1"] and "Worst case ε=0.3" in columns
    assert list(table.frame["Headline: worst case ε=0.1"].str.split(" ").str[0]) == ["60.0", "10.0"]
    # a budget no attack ran at: the default headline
    board = compute_leaderboard(_frame(), settings={"unit": {"headline": {"linf": 0.2}}})
    tables = {t.setting: t for t in board.datasets[0].tables}
    assert "Headline: worst case ε=0.3" in tables["L∞, white-box"].frame.columns
    # ... while the best known at 0.2 counts what broke at 0.1 (a smaller budget counts at a larger one)
    best = tables["best known robust accuracy, L∞"].frame
    assert list(best["Best known ε=0.2"].str.split(" ").str[0]) == ["60.0", "10.0"]
