"""The best-known robust accuracy (bench.report.best_known, bench.report.summary) on constructed stores whose
numbers are counted by hand: which rows count, at which budget, over which images, and how it is shown."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from bench.metrics import wilson_interval
from bench.report import compute_leaderboard, summary
from bench.report.best_known import best_known, collect
from bench.report.numbers import leaderboard_numbers
from bench.report.rows import dedupe, normalize
from bench.report.render import render_html, render_markdown
from test_report import _md_table, _row

INDICES = list(range(100, 110))  # the ten attacked test images


def _attack_row(defense: str, attack: str, budget: float | None, correct: list[int], *, source: str = "white-box",
                surface: str = "deployed", indices: list[int] | None = None, evaluated_on: str = "deployed",
                threat_model: str = "linf", budget_param: str = "eps", norms: list[float] | None = None,
                repeats: int = 1, mean_acc: float | None = None) -> dict:
    row = _row(defense, attack, budget, correct, source=source, threat_model=threat_model)
    n = len(correct)
    row.update(surface=surface, evaluated_on=evaluated_on, budget_param=budget_param,
               example_indices=np.asarray(indices if indices is not None else INDICES[:n], dtype=np.int64),
               key=f"k-{defense}-{attack}-{budget}-{source}-{surface}-{evaluated_on}")
    norm_column = "perturbation_l2" if threat_model == "l2" else "perturbation_linf"
    row[norm_column] = None if norms is None else np.asarray(norms, dtype=np.float32)
    if repeats > 1:
        row.update(repeats=repeats, robust_acc=mean_acc, robust_acc_strict=float(np.mean(correct)))
    return row


def _clean(defense: str, right: int = 9) -> dict:
    return _row(defense, "none", None, [1] * right + [0] * (10 - right))


def _evidence(rows: list[dict]) -> dict:
    return collect(dedupe(normalize(pd.DataFrame(rows))))


# --------------------------------------------------------------------------- which rows count


def test_a_noise_check_at_zero_sets_a_dustbin_like_rows_best_known_and_is_named():
    rows = [_clean("dustbin"),
            _attack_row("dustbin", "pgd", 0.2, [1] * 10),  # the suite's own attack: 100%
            _attack_row("dustbin", "pgd-reject-aware", 0.2, [1] * 7 + [0] * 3, surface="reject-aware"),
            _attack_row("dustbin", "noise-linf", 0.2, [0] * 10, source="check:noise")]  # noise: 0%
    best = best_known(_evidence(rows)[("toy", "dustbin")], "linf", 0.2)
    assert (best.hits, best.n) == (0, 10)
    assert best.strongest == "noise-linf (soundness check)"
    assert (best.strongest_broke, best.only_strongest) == (10, 7)  # reject-aware PGD broke 3 of them too

    board = compute_leaderboard(pd.DataFrame(rows), settings={"unit": {"headline": {"linf": 0.2}}})
    header, body = _md_table(render_markdown(board), "best known robust accuracy, L∞")
    cells = dict(zip(header, body[0]))
    assert cells["Best known ε=0.2"] == "0.0 [0.0, 27.8]"
    assert cells["Broken most by"] == "noise-linf (soundness check): 10 of 10, 7 only by it"


def test_check_rows_on_a_subset_of_the_images_combine_over_the_images_they_share():
    # The suite attacks ten images; the noise check the first five, and breaks all five.
    rows = [_attack_row("d", "pgd", 0.2, [1] * 8 + [0] * 2),
            _attack_row("d", "noise-linf", 0.2, [0] * 5, source="check:noise", indices=INDICES[:5])]
    best = best_known(_evidence(rows)[("toy", "d")], "linf", 0.2)
    assert (best.hits, best.n) == (0, 5)  # on the five they share: lower than 8/10 on all ten
    assert [e.attack for e in best.apart] == []  # the pgd row attacked all five: counted, not apart
    # Rows on none of the chosen set's images are named as apart, never silently mixed.
    rows.append(_attack_row("d", "fgsm", 0.2, [1] * 4, indices=[1, 2, 3, 4]))
    best = best_known(_evidence(rows)[("toy", "d")], "linf", 0.2)
    assert (best.hits, best.n) == (0, 5) and [e.attack for e in best.apart] == ["fgsm"]


def test_a_check_on_part_of_the_images_counts_its_breaks_on_them_within_the_whole_set():
    # The suite's two attacks on ten images leave 8; the check on the first five breaks one of those 8.
    rows = [_attack_row("d", "pgd", 0.2, [1] * 8 + [0] * 2),
            _attack_row("d", "fgsm", 0.2, [1] * 10),
            _attack_row("d", "pgd@stronger", 0.2, [0, 1, 1, 1, 1], source="check:stronger", indices=INDICES[:5])]
    best = best_known(_evidence(rows)[("toy", "d")], "linf", 0.2)
    # On all ten: 7 robust (70%, the check's break counted); on the five the check attacked: 4 (80%).
    assert (best.hits, best.n) == (7, 10) and best.apart == ()
    assert (best.strongest, best.strongest_broke, best.only_strongest) == ("pgd", 2, 2)
    # Where the five are the weaker part, they are the number: the check breaks three of them.
    rows[2]["correct"] = np.array([0, 0, 0, 1, 1], dtype=bool)
    rows[2]["robust_acc"] = 0.4
    best = best_known(_evidence(rows)[("toy", "d")], "linf", 0.2)
    assert (best.hits, best.n) == (2, 5)  # 40% on the five, against 5 of 10 (50%) on all ten


def test_a_result_at_a_smaller_budget_counts_at_a_larger_one():
    rows = [_attack_row("d", "pgd", 0.1, [0, 0, 0] + [1] * 7),
            _attack_row("d", "fgsm", 0.2, [1, 1, 1, 0] + [1] * 6)]
    evidence = _evidence(rows)[("toy", "d")]
    assert best_known(evidence, "linf", 0.2).hits == 6  # pgd's three at 0.1 and fgsm's one at 0.2
    assert best_known(evidence, "linf", 0.1).hits == 7  # fgsm at 0.2 says nothing about 0.1
    assert best_known(evidence, "linf", 0.05) is None


def test_a_minimum_norm_attack_counts_exactly_the_examples_within_eps_by_their_norms():
    # C&W (budget c = 1, not a distance): six examples broken, at these L2 sizes.
    correct = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    norms = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 0.1, 0.1, 0.1, 0.1]
    rows = [_attack_row("d", "cw-l2", 1.0, correct, threat_model="l2", budget_param="c", norms=norms)]
    evidence = _evidence(rows)[("toy", "d")]
    assert [best_known(evidence, "l2", eps).hits for eps in (0.4, 1.0, 2.0, 2.9, 3.0)] == [10, 8, 6, 5, 4]
    # The norm of an example it did not break does not matter; without stored norms it says nothing.
    rows[0]["perturbation_l2"] = None
    assert best_known(_evidence(rows)[("toy", "d")], "l2", 2.0) is None


def test_a_member_scored_row_never_counts_for_the_ensemble():
    rows = [_attack_row("ens", "pgd", 0.2, [1] * 10),
            _attack_row("ens", "pgd", 0.2, [0] * 10, surface="member:0", evaluated_on="member:0"),
            _attack_row("ens", "bim", 0.2, [0] + [1] * 9, surface="member:0")]  # crafted on a member, scored on ens
    evidence = _evidence(rows)
    assert set(evidence) == {("toy", "ens")}
    best = best_known(evidence[("toy", "ens")], "linf", 0.2)
    assert best.hits == 9 and best.strongest == "bim (surface member:0)"


def test_a_stochastic_rows_number_is_strict_with_the_mean_beside_it():
    # Robust in every repeat: 4 of 10; the mean over repeats 62%.
    rows = [_clean("rse"), _attack_row("rse", "pgd", 0.2, [1] * 4 + [0] * 6, repeats=5, mean_acc=0.62)]
    best = best_known(_evidence(rows)[("toy", "rse")], "linf", 0.2)
    assert best.acc == pytest.approx(0.4) and best.repeats == 5 and best.strongest_mean == pytest.approx(0.62)
    board = compute_leaderboard(pd.DataFrame(rows))
    header, body = _md_table(render_markdown(board), "best known robust accuracy, L∞")
    assert dict(zip(header, body[0]))["Best known ε=0.2"] == "40.0 [16.8, 68.7] strict (mean 62.0)"


def test_the_newest_row_of_a_rerun_counts():
    old = _attack_row("d", "pgd", 0.2, [0] * 10)
    new = {**_attack_row("d", "pgd", 0.2, [1] * 10), "created_at": "2025-01-01T00:00:00+00:00", "key": "k-new"}
    assert best_known(_evidence([old, new])[("toy", "d")], "linf", 0.2).hits == 10


# --------------------------------------------------------------------------- how it is shown


def test_the_summary_ranks_every_suites_defenses_and_links_to_their_sections():
    rows = [_clean("a"), _attack_row("a", "pgd", 0.3, [1] * 6 + [0] * 4),
            {**_clean("b"), "suite": "other", "key": "k-b-clean"},
            {**_attack_row("b", "pgd", 0.3, [1] * 8 + [0] * 2), "suite": "other"}]
    board = compute_leaderboard(pd.DataFrame(rows), settings={"unit": {"headline": {"linf": 0.3}}})
    [table] = board.summary
    assert table.setting == "toy, L∞, ε=0.3"
    assert list(table.frame["Defense"]) == ["b", "a"] and list(table.frame["Suite"]) == ["other", "unit"]
    assert list(table.frame["Best known"]) == ["80.0 [49.0, 94.3]", "60.0 [31.3, 83.2]"]
    readme = render_markdown(board)
    assert readme.index("## Summary: best known robust accuracy") < readme.index("## other — toy")
    assert "[other — toy](#other--toy)" in readme
    html = render_html(board)
    assert '<a href="#other-toy">other — toy</a>' in html and 'id="other-toy"' in html
    numbers = leaderboard_numbers(pd.DataFrame(rows), best_known=board.best_known)
    best = numbers[numbers["metric"] == "best_known"]
    assert list(best["value"]) == [0.8, 0.6] and list(best["n"]) == [10, 10]
    low, high = wilson_interval(8, 10)
    assert best["ci_low"].iloc[0] == pytest.approx(low) and best["ci_high"].iloc[0] == pytest.approx(high)


def test_a_flagged_row_is_never_marked_best_and_keeps_its_flag():
    rows = [_clean("masked"), _clean("honest"),
            _attack_row("masked", "pgd", 0.2, [1] * 10), _attack_row("honest", "pgd", 0.2, [1] * 6 + [0] * 4)]
    known = summary.SuiteEvidence(suite="unit", section="toy", dataset="toy",
                                  evidence={d: v for (_, d), v in _evidence(rows).items()},
                                  clean={"masked": (9, 10), "honest": (9, 10)}, headline={"linf": 0.2},
                                  flags={("masked", "linf"): [6]})
    [table] = summary.suite_tables(known)
    assert list(table.frame["Defense"]) == ["masked ⚠6", "honest"]  # ranked by the number, flag kept
    assert table.frame["Best known ε=0.2"].iloc[0].endswith("⚠6")
    best = table.best()
    assert not best.iloc[0].any() and best.iloc[1]["Best known ε=0.2"]
    [top], _ = summary.summary([known])
    assert not top.best().iloc[0].any() and top.best().iloc[1]["Best known"]
    assert math.isclose(top.values.iloc[0]["Best known"], 100.0)


def test_in_chromium_a_flagged_rows_cell_is_not_marked_best(tmp_path):
    """The page as a browser renders it: the flagged row leads the column, the honest row holds its bold."""
    from test_html_browser import _browser

    browser = _browser()
    if not browser.CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    rows = [_clean("masked"), _clean("honest"),
            _attack_row("masked", "pgd", 0.2, [1] * 10), _attack_row("honest", "pgd", 0.2, [1] * 6 + [0] * 4),
            # check 6's evidence: noise at 0.2 leaves "masked" 0% where PGD leaves it 100%
            _attack_row("masked", "noise-linf@noise", 0.2, [0] * 10, source="check:noise"),
            _attack_row("honest", "noise-linf@noise", 0.2, [1] * 10, source="check:noise")]
    for row in rows[-2:]:
        row["attack_config"] = '{"name": "noise-linf"}'
    for row in rows[2:4]:
        row["attack_config"] = '{"name": "pgd-linf", "params": {"steps": 10}}'
    page = tmp_path / "index.html"
    page.write_text(render_html(compute_leaderboard(pd.DataFrame(rows))), encoding="utf-8")
    dom = browser.dump_dom(page)
    cells = re.findall(r'<td class="([^"]*)">(?:<a [^>]*>)?([^<]*)', dom)
    marked = [text for css, text in cells if "best" in css.split()]
    flagged = [text for _, text in cells if "⚠6" in text]
    assert flagged, "the noise check should flag 'masked' (check 6)"
    assert not any("⚠" in text for text in marked)
    assert "honest" not in marked and any(text.startswith("0.0 [0.0, 27.8]") for _, text in cells)


def test_attacks_only_at_larger_budgets_give_no_number_and_smaller_ones_are_marked():
    # FGSM at 0.3 stores perturbations of size 0.3: at 0.1 it broke nothing *within 0.1*, which is no evidence of
    # robustness there (it was a spurious 100% before).
    rows = [_attack_row("d", "fgsm", 0.3, [0] * 6 + [1] * 4, norms=[0.3] * 10),
            _attack_row("d", "pgd", 0.1, [0] * 2 + [1] * 8, norms=[0.1] * 10)]
    evidence = _evidence(rows)[("toy", "d")]
    assert best_known(evidence[:1], "linf", 0.1) is None
    at_01 = best_known(evidence, "linf", 0.1)
    assert (at_01.hits, at_01.n, at_01.only_below) == (8, 10, None), "pgd ran at 0.1: measured there"
    # A DeepFool-like minimum-norm row speaks to every budget through its per-example sizes.
    minimal = _attack_row("d", "deepfool", None, [0] * 3 + [1] * 7, norms=[0.05, 0.2, 0.4] + [0.0] * 7)
    assert best_known(_evidence([rows[0], minimal])[("toy", "d")], "linf", 0.1).only_below is None
    # At 0.2 only the 0.1 run counts as a whole: a valid bound, marked and ranked after numbers measured at 0.2.
    at_02 = best_known(_evidence(rows[1:])[("toy", "d")], "linf", 0.2)
    assert (at_02.hits, at_02.only_below) == (8, 0.1)
    assert summary.best_text(at_02).endswith("(attacked at ε≤0.1 only)")


def test_a_section_column_from_smaller_budgets_only_says_so():
    rows = [_clean("a"), _clean("b"),
            _attack_row("a", "pgd", 0.1, [0] * 2 + [1] * 8, norms=[0.1] * 10),
            _attack_row("b", "pgd", 0.1, [0] * 3 + [1] * 7, norms=[0.1] * 10),
            _attack_row("b", "pgd", 0.2, [0] * 6 + [1] * 4, norms=[0.2] * 10)]
    board = compute_leaderboard(pd.DataFrame(rows), settings={"unit": {"headline": {"linf": 0.1}}})
    header, body = _md_table(render_markdown(board), "best known robust accuracy, L∞")
    cells = {line[0]: dict(zip(header, line)) for line in body}
    assert cells["a"]["ε=0.2"] == "80.0 (ε≤0.1 only)" and cells["b"]["ε=0.2"] == "40.0"
