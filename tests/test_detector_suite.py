"""The detector track through the harness: suite schema, plan, stored detection rows, leaderboard."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from bench import checks
from bench.cli import main
from bench.config import load_suite
from bench.errors import UserError
from bench.plan import build_plan
from bench.store import Store

DETECTOR_SUITE = """\
name: det
device: cpu
datasets:
  - name: digits
    eval_size: 60
detector_attacks:
  - name: fgsm
    budgets: [0.05, 0.1, 0.2, 0.3, 0.5]
  - name: bim
    label: igsm
    params: {steps: 5}
    budgets: [0.05, 0.1, 0.2, 0.3]
  - name: gaussian-noise
    params: {repeats: 5}
    budgets: [1.0, 2.0, 4.0]
detectors:
  - name: bimodel-mismatch
    label: bimodel
    params: {model_a: strauss-mnist, model_b: monteiro-mlp, epochs: 4, optimizer: adam, lr: 0.003}
    images: 400
    folds: 3
    train_attacks: [fgsm, igsm]
    test_attacks: [fgsm, igsm, gaussian-noise]
    baselines:
      - name: feature-squeezing
        params: {bits: 2, median_window: 2}
    adaptive_attacks:
      - name: pgd-linf
        params: {steps: 10}
        budgets: [0.3]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The detector suite, run once for the module: (store dir, leaderboard dir, exit code)."""
    root = tmp_path_factory.mktemp("det")
    suite = root / "suite.yaml"
    suite.write_text(DETECTOR_SUITE)
    code = main(["run", str(suite), "--store", str(root / "s"), "--leaderboard", str(root / "lb"), "--quiet"])
    return root, code


def test_plan_shares_data_between_detector_and_baseline(write_suite):
    plan = build_plan(load_suite(write_suite(DETECTOR_SUITE)))
    kinds = [t.kind for t in plan.tasks]
    assert kinds.count("train") == 1 and kinds.count("detector-data") == 3
    detect = plan.by_kind("detect")
    assert [t.info["method"] for t in detect] == ["bimodel", "feature-squeezing"]
    assert detect[0].deps == detect[1].deps  # the baseline is scored on the same detector data
    adaptive, *evidence = plan.by_kind("adaptive")
    assert len(evidence) == 4 and all(t.config["check"] and t.deps == adaptive.deps for t in evidence)
    data_by_attack = {t.info["attack"]: t.key for t in plan.by_kind("detector-data")}
    # The detector under attack is fitted on the train attacks' data only.
    assert adaptive.deps[1:] == [data_by_attack["fgsm"], data_by_attack["igsm"]]
    assert adaptive.config["threshold"] == {"rule": "fpr", "fpr": 0.05}
    own = build_plan(load_suite(write_suite(DETECTOR_SUITE.replace("    folds: 3", "    folds: 3\n"
                                                                   "    adaptive_threshold: classifier"))))
    assert own.by_kind("adaptive")[0].config["threshold"] == {"rule": "classifier"}
    assert all(plan.keys.index(d) < plan.keys.index(t.key) for t in plan.tasks for d in t.deps)


@pytest.mark.parametrize("edit, message", [
    (("name: bimodel-mismatch", "name: undefended"), "detectors[0].name: 'undefended' is a defense, not a detector"),
    (("test_attacks: [fgsm, igsm, gaussian-noise]", "test_attacks: [fgsm, pgd]"),
     "detectors[0].test_attacks: unknown detector attack label 'pgd'"),
    (("name: feature-squeezing", "name: feature-squeeze"),
     "detectors[0].baselines[0].name: unknown baseline detector 'feature-squeeze'"),
    (("{bits: 2, median_window: 2}", "{bits: 2, median_window: 5}"),
     "detectors[0].baselines[0].params"),
    (("      - name: pgd-linf", "      - name: deepfool"),
     "detectors[0].adaptive_attacks[0].name: a detector-aware attack needs the plain PyTorch backend"),
    (("    folds: 3", "    folds: 1"), "detectors[0].folds"),
    (("        budgets: [0.3]", "        budgets: [0.3]\n        detector_weights: [0.5, 0]"),
     "detectors[0].adaptive_attacks[0].detector_weights[1]: must be > 0"),
    (("    budgets: [1.0, 2.0, 4.0]", "    budgets: [-1.0]"), "detector_attacks[2].budgets[0]"),
])
def test_bad_detector_entries_name_the_key(write_suite, edit, message, capsys):
    old, new = edit
    assert old in DETECTOR_SUITE
    path = write_suite(DETECTOR_SUITE.replace(old, new))
    with pytest.raises(UserError, match=None) as error:
        load_suite(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert main(["validate", str(path)]) == 2


def test_a_detector_listed_as_a_defense_is_a_user_error(write_suite, capsys):
    path = write_suite("name: x\ndatasets: [{name: digits}]\ndefenses: [{name: bimodel-mismatch}]\n")
    assert main(["validate", str(path)]) == 2
    assert "defenses[0].name: 'bimodel-mismatch' is a detector; list it under detectors" in capsys.readouterr().err


def test_detector_suite_runs_and_stores_every_view(finished):
    root, code = finished
    assert code == 0
    rows = Store(root / "s").detections()
    data = rows[rows["evaluation"] == "attack-data"].set_index("train_attack")
    assert set(data.index) == {"fgsm", "igsm", "gaussian-noise"}
    # Table II: white-box gradient attacks with a budget ladder up to 0.5 fool nearly every image.
    assert (data.loc[["fgsm", "igsm"], "attack_success_rate"] > 0.9).all()
    assert (data["mse_mean"] > 0).all() and (data["n"] > 100).all()
    # About half the images are chosen for an attack (a fair coin); nearly all of those are fooled.
    assert 0.35 < data.loc["fgsm", "adversarial_fraction"] < 0.6
    cv = rows[rows["evaluation"] == "cv"].set_index(["method", "train_attack"])
    assert len(cv) == 6  # 2 methods x 3 attacks
    assert cv.loc[("bimodel", "fgsm"), "accuracy"] > 0.7
    assert cv.loc[("bimodel", "fgsm"), "roc_auc"] > 0.75
    assert ((cv["clean_fpr"] >= 0) & (cv["clean_fpr"] <= 0.25)).all()
    assert (cv["folds"] == 3).all()
    cross = rows[rows["evaluation"] == "cross"]
    assert len(cross) == 2 * 2 * 3  # methods x train attacks x test attacks
    assert set(cross["train_attack"]) == {"fgsm", "igsm"}
    assert cross["accuracy"].between(0, 1).all()
    adaptive = rows[rows["evaluation"].isin(["adaptive", "non-adaptive", "worst-case"])
                    & ~rows["test_attack"].str.contains("@")].set_index("evaluation")  # not the checks' rows
    assert adaptive.loc["adaptive", "n"] == adaptive.loc["non-adaptive", "n"] == 60
    # Folding the detector in helps the attacker evade it ...
    assert adaptive.loc["adaptive", "robust_acc"] <= adaptive.loc["non-adaptive", "robust_acc"]
    assert adaptive.loc["adaptive", "detection_rate"] < adaptive.loc["non-adaptive", "detection_rate"]
    # ... and the per-image worst case is at most either attack's robust accuracy.
    assert adaptive.loc["worst-case", "robust_acc"] <= adaptive.loc["adaptive", "robust_acc"]
    assert adaptive.loc["adaptive", "clean_rejected"] == adaptive.loc["non-adaptive", "clean_rejected"]
    # The operating point: 5% false positives on clean held-out test images (binomial slack on 60 images).
    assert (adaptive["target_fpr"] == 0.05).all() and adaptive["threshold"].notna().all()
    assert adaptive.loc["non-adaptive", "clean_rejected"] <= 0.2


def test_detector_leaderboard_has_tables_and_heatmaps(finished):
    root, _ = finished
    readme = (root / "lb" / "README.md").read_text()
    html = (root / "lb" / "index.html").read_text()
    for text in ("digits — detector bimodel", "Table II", "Table III", "cross-attack accuracy of bimodel",
                 "cross-attack accuracy of feature-squeezing", "detector-aware (adaptive)", "TPR @ FPR 5%"):
        assert text in readme and text in html
    heatmaps = sorted(p.name for p in (root / "lb" / "plots").glob("*detector*.png"))
    assert heatmaps == ["digits__detector__bimodel__cross__bimodel.png",
                        "digits__detector__bimodel__cross__feature-squeezing.png"]
    assert all((root / "lb" / "plots" / h).read_bytes()[:4] == b"\x89PNG" for h in heatmaps)
    # The markdown table is the stored matrix, cell for cell.
    rows = Store(root / "s").detections()
    cell = rows[(rows["evaluation"] == "cross") & (rows["method"] == "bimodel")
                & (rows["train_attack"] == "fgsm") & (rows["test_attack"] == "igsm")]["accuracy"].item()
    assert f"{cell:.3f}" in readme


def test_the_guarded_classifier_gets_the_soundness_checks(finished):
    root, _ = finished
    rows = Store(root / "s").detections()
    evidence = rows[rows["test_attack"].str.contains("@")]
    # Detector-aware runs of the suite's PGD unbounded and with 4x the steps, FGSM and noise: 60 images each.
    assert sorted(evidence["test_attack"]) == ["fgsm@single-step", "noise-linf@noise", "pgd-linf@stronger",
                                               "pgd-linf@unbounded"]
    assert (evidence["evaluation"] == "adaptive").all() and (evidence["n"] == 60).all()
    unbounded = evidence.set_index("test_attack").loc["pgd-linf@unbounded"]
    assert unbounded["budget"] == 1.0 and json.loads(unbounded["attack_config"])["params"]["steps"] == 10
    assert json.loads(evidence.set_index("test_attack").loc["pgd-linf@stronger", "attack_config"]
                      )["params"]["steps"] == 40
    verdicts = checks.evaluate(checks.guarded_rows(rows))
    assert {v.defense for v in verdicts} == {"bimodel (guarded)"}
    assert sorted(v.check.number for v in verdicts) == [2, 3, 4, 6]  # no probe: 1 and 7 have no evidence
    # At eps = 1 any image is reachable: the detector-aware PGD gets every image through.
    unbounded_verdict = next(v for v in verdicts if v.check.number == 2)
    assert not unbounded_verdict.failed and unbounded["robust_acc"] <= 0.02
    readme = (root / "lb" / "README.md").read_text()
    assert "### soundness checks" in readme.split("digits — detector bimodel")[1]
    assert "| bimodel (guarded) | L∞" in readme.replace("  ", " ").replace("  ", " ")


def test_detector_checks_flag_a_guarded_classifier_whose_evaluation_is_unsound():
    def row(attack, budget, robust, name="pgd-linf"):
        return {"dataset": "d", "detector": "det", "evaluation": "adaptive", "test_attack": attack, "seed": 0,
                "attack_config": json.dumps({"name": name, "params": {"steps": 10}}), "budget": budget, "n": 200,
                "robust_acc": robust, "created_at": "2026-12-04T00:00:00+00:00"}

    sound = pd.DataFrame([row("pgd-linf", 0.3, 0.30), row("pgd-linf@unbounded", 1.0, 0.0),
                          row("pgd-linf@stronger", 0.3, 0.29), row("fgsm@single-step", 0.3, 0.5, "fgsm"),
                          row("noise-linf@noise", 0.3, 0.9, "noise-linf"), row("other", 0.3, 0.5, "fgsm")])
    sound.loc[5, "evaluation"] = "non-adaptive"  # the model alone: not the guarded classifier's evidence
    assert not any(v.failed for v in checks.evaluate(checks.guarded_rows(sound)))
    # A detector that masks the gradient: the unbounded attack stays far from 0, noise and FGSM do better.
    masked = sound.copy()
    masked.loc[1, "robust_acc"], masked.loc[3, "robust_acc"], masked.loc[4, "robust_acc"] = 0.6, 0.1, 0.05
    assert checks.flags(checks.evaluate(checks.guarded_rows(masked))) == {("d", "det (guarded)", "linf"): [2, 4, 6]}


def test_rerun_is_a_no_op_and_keeps_rows(finished, capsys):
    root, _ = finished
    before = sqlite3.connect(root / "s" / "advbench.sqlite").execute(
        "SELECT COUNT(*) FROM detection_results").fetchone()[0]
    capsys.readouterr()
    assert main(["run", str(root / "suite.yaml"), "--store", str(root / "s"), "--leaderboard", str(root / "lb"),
                 "--quiet"]) == 0
    assert "0 run" in capsys.readouterr().out
    after = sqlite3.connect(root / "s" / "advbench.sqlite").execute(
        "SELECT COUNT(*) FROM detection_results").fetchone()[0]
    assert before == after > 0
    assert isinstance(Store(root / "s").detections(), pd.DataFrame)


def test_two_entries_share_the_trained_pair_and_keep_their_own_rows(write_suite):
    second = DETECTOR_SUITE.split("detectors:\n")[1].replace("label: bimodel", "label: bimodel-own-threshold") \
        .replace("    folds: 3", "    folds: 3\n    adaptive_threshold: classifier")
    plan = build_plan(load_suite(write_suite(DETECTOR_SUITE + second)))
    assert len(set(plan.keys)) == len(plan.keys)
    assert len(plan.by_kind("train")) == 1 and len(plan.by_kind("detector-data")) == 3  # shared
    adaptive = [t for t in plan.by_kind("adaptive") if "check" not in t.config]
    assert len(plan.by_kind("detect")) == 4 and len(adaptive) == 2      # one set per entry
