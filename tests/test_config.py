"""Bad input: one clear line naming file and key, exit 2, no traceback, nothing written."""

from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_suite
from bench.plan import build_plan
from tests.conftest import TINY_SUITE


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def bad_suite_error(write_suite, capsys, tmp_path, text):
    path = write_suite(text)
    store = tmp_path / "store"
    board = tmp_path / "board"
    code, out, err = run_cli(capsys, "run", path, "--store", store, "--leaderboard", board, "--data-dir", tmp_path / "data")
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not store.exists() and not board.exists(), "a rejected suite must write nothing"
    assert str(path) in err
    return err


@pytest.mark.parametrize("edit, key, message", [
    (("  - name: fgsm\n    budgets: [0.1, 0.3]", "  - name: fgsm\n    budgets: [0.1, -0.3]"),
     "attacks[0].budgets[1]", "eps"),
    (("  - name: fgsm\n    budgets: [0.1, 0.3]", "  - name: fgsm\n    budgets: [0.1, 1.5]"),
     "attacks[0].budgets[1]", "1"),
    (("name: pgd-linf", "name: pgd-lnf"), "attacks[1].name", "did you mean 'pgd-linf'"),
    (("name: gaussian-augment", "name: gausian-augment"), "defenses[1].name", "did you mean 'gaussian-augment'"),
    (("name: digits", "name: digit"), "datasets[0].name", "did you mean 'digits'"),
    (("params: {steps: 5,", "params: {steps: five,"), "attacks[1].params.steps", "integer"),
    (("params: {steps: 5,", "params: {stepz: 5,"), "attacks[1].params.stepz", "unknown key"),
    (("seeds: [0]", "seeds: [0]\nworkers: 3"), "workers", "unknown key"),
    (("params: {steps: 5,", "params: {stepz: 5,"), "attacks[1].params.stepz", "did you mean 'steps'"),
    (("seeds: [0]", "seed: [0]"), "seed", "unknown key; did you mean 'seeds'"),
    (("    eval_size: 60", "    eval_sise: 60"), "datasets[0].eval_sise", "did you mean 'eval_size'"),
    (("std: 0.2", "std: -0.2"), "defenses[1].params", "std must be >= 0"),
    (("eval_size: 60", "eval_size: -1"), "datasets[0].eval_size", "greater than 0"),
    (("transfer_from: undefended", "transfer_from: undefend"), "attacks[2].transfer_from", "did you mean 'undefended'"),
    (("params: {epochs: 4, batch_size: 64}\n", "params: {epochs: 4, batch_size: 64, arch: resnet-18}\n"),
     "defenses[0].params", "did you mean 'resnet18'"),
    (("label: gauss", "label: undefended"), "defenses[1].label", "duplicate label"),
    (("seeds: [0]", "seeds: [0]\nheadline: {lnf: 0.3}"), "headline.lnf", "did you mean 'linf'"),
    (("seeds: [0]", "seeds: [0]\nheadline: {linf: 3}"), "headline.linf", "at most 1"),
    (("    eval_size: 60", "    eval_size: 60\n    verify: maybe"), "datasets[0].verify", "valid boolean"),
    (("    eval_size: 60", "    eval_size: 60\n    verify: false"), "datasets[0].verify",
     "'digits' has no checksums to skip; verify: false applies to cifar10, cifar100, stl10, svhn"),
    (("    eval_size: 60", "    eval_size: 60\n    verfy: false"), "datasets[0].verfy", "did you mean 'verify'"),
])
def test_bad_suite_names_file_and_key(write_suite, capsys, tmp_path, edit, key, message):
    old, new = edit
    assert old in TINY_SUITE
    err = bad_suite_error(write_suite, capsys, tmp_path, TINY_SUITE.replace(old, new, 1))
    assert f": {key}:" in err and message in err


def test_every_problem_is_listed_on_one_line(write_suite, capsys, tmp_path):
    text = TINY_SUITE.replace("params: {steps: 5,", "params: {steps: five,").replace("budgets: [0.1, 0.3]\n  - name: pgd",
                                                                                    "budgets: [0.1, -0.3]\n  - name: pgd")
    text = text.replace("name: gaussian-augment", "name: gausian-augment")
    err = bad_suite_error(write_suite, capsys, tmp_path, text)
    assert "attacks[1].params.steps" in err and "attacks[0].budgets[1]" in err and "defenses[1].name" in err
    assert "more)" not in err


def test_malformed_yaml_names_line(write_suite, capsys, tmp_path):
    err = bad_suite_error(write_suite, capsys, tmp_path, "name: x\ndatasets: [digits\ndefenses: []\n")
    assert "malformed YAML" in err and "line" in err


def test_suite_that_is_not_a_mapping(write_suite, capsys, tmp_path):
    err = bad_suite_error(write_suite, capsys, tmp_path, "- just\n- a list\n")
    assert "must be a mapping" in err


def test_missing_dataset_says_how_to_get_it(write_suite, capsys, tmp_path):
    err = bad_suite_error(write_suite, capsys, tmp_path, TINY_SUITE.replace("name: digits", "name: cifar10"))
    assert "datasets[0]" in err and "--download" in err


def test_missing_suite_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "validate", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml: cannot read suite" in err


def test_validate_accepts_a_good_suite_and_counts_tasks(write_suite, capsys):
    code, out, _ = run_cli(capsys, "validate", write_suite())
    # 2 trainings; crafts: fgsm 2 budgets x 2 defenses + pgd likewise; the transfer craft on
    # undefended is its white-box fgsm craft, so it is planned once and scored on gauss only.
    # Scores: 2 clean + 8 white-box + 1 transfer.
    assert code == 0 and "ok" in out and "21 tasks (2 train, 8 craft, 11 score)" in out


def test_leaderboard_without_store_is_a_user_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "leaderboard", "--store", tmp_path / "none", "--out", tmp_path / "lb")
    assert code == 2 and "no results store" in err and not (tmp_path / "lb").exists()


def test_list_shows_parameters_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "list", "defenses")
    assert code == 0 and "gaussian-augment" in out and "std: float = 0.3" in out
    code, out, _ = run_cli(capsys, "list", "attacks")
    assert code == 0 and "pgd-linf" in out and "steps: int = " in out
    code, out, _ = run_cli(capsys, "list", "datasets")
    assert code == 0 and "mnist5k" in out


@pytest.mark.parametrize("suite_path", sorted(Path(__file__).parent.parent.glob("suites/*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_suite_validates_and_plans(suite_path):
    # No data context: the paper-scale suites' datasets need not be on this machine.
    suite = load_suite(suite_path)
    plan = build_plan(suite)
    assert plan.tasks and len(set(plan.keys)) == len(plan.keys)


def test_two_labels_for_one_defense_config_train_once(write_suite):
    text = TINY_SUITE.replace("  - name: gaussian-augment\n    label: gauss\n    params: {std: 0.2, epochs: 4, batch_size: 64}",
                              "  - name: undefended\n    label: same-again\n    params: {epochs: 4, batch_size: 64}")
    assert "same-again" in text
    plan = build_plan(load_suite(write_suite(text)))
    assert len(set(plan.keys)) == len(plan.keys) and len(plan.by_kind("train")) == 1


def test_verify_enters_the_task_keys_only_when_false(write_suite):
    cifar = TINY_SUITE.replace("name: digits\n", "name: cifar10\n", 1)  # no data context: no files needed
    plan = build_plan(load_suite(write_suite(cifar)))
    explicit, unverified = (build_plan(load_suite(write_suite(
        cifar.replace("eval_size: 60", f"eval_size: 60\n    verify: {value}")))) for value in ("true", "false"))
    # The default is in no config or key, so the stored results of suites that do not set it stay theirs.
    assert all("verify" not in t.config["dataset"] for t in plan.by_kind("train"))
    assert explicit.keys == plan.keys
    # verify: false is other data: every task is another one (train, craft and clean score configs hold the
    # dataset; scores of crafted examples depend on those).
    assert len(unverified.keys) == len(plan.keys) and not set(unverified.keys) & set(plan.keys)
    assert all(t.config["dataset"]["verify"] is False for t in unverified.by_kind("train"))
