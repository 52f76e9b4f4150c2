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


def bad_suite_error(write_suite, capsys, tmp_path, text, *, problems: int = 1):
    """The error of a suite with ``problems`` problems: one line each, each naming the file."""
    path = write_suite(text)
    store = tmp_path / "store"
    board = tmp_path / "board"
    code, out, err = run_cli(capsys, "run", path, "--store", store, "--leaderboard", board, "--data-dir", tmp_path / "data")
    assert code == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == problems, err
    assert lines[0].startswith(f"advbench: error: {path}: ")
    assert all(line.startswith(f"{path}: ") for line in lines[1:]), err
    assert not store.exists() and not board.exists(), "a rejected suite must write nothing"
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


def test_every_problem_is_listed_on_a_line_of_its_own(write_suite, capsys, tmp_path):
    text = TINY_SUITE.replace("params: {steps: 5,", "params: {steps: five,").replace("budgets: [0.1, 0.3]\n  - name: pgd",
                                                                                    "budgets: [0.1, -0.3]\n  - name: pgd")
    text = text.replace("name: gaussian-augment", "name: gausian-augment")
    err = bad_suite_error(write_suite, capsys, tmp_path, text, problems=3)
    lines = err.strip().splitlines()
    assert [next(k for k in ("defenses[1].name", "attacks[0].budgets[1]", "attacks[1].params.steps")
                 if f": {k}: " in line) for line in lines] == \
        ["defenses[1].name", "attacks[0].budgets[1]", "attacks[1].params.steps"]
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
def test_every_shipped_suite_validates_and_plans(suite_path, capsys, tmp_path):
    # No data context: the paper-scale suites' datasets need not be on this machine.
    suite = load_suite(suite_path)
    plan = build_plan(suite)
    assert plan.tasks and len(set(plan.keys)) == len(plan.keys)
    capsys.readouterr()
    # The command, as a user runs it: --download lets torchvision data that is not here pass the availability
    # check (nothing is fetched by validate), so every other check runs as on a machine that has it.
    code, out, err = run_cli(capsys, "validate", suite_path, "--download", "--data-dir", tmp_path / "data")
    assert code == 0 and "ok" in out, err
    # Warnings (wasteful, not wrong) only where known; a suite's headline for a threat model with no eps budget
    # changes nothing and should go from the suite.
    known = []  # an L2 headline over minimum-norm attacks only counts them by their perturbation sizes
    for line in err.splitlines():
        assert line.startswith(f"advbench: warning: {suite_path}: ") and any(f": {k}: " in line for k in known), err


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


# ---- issue 17: what used to pass validation and fail mid-run (exit 1, store written) -------------------------

DETECTOR_PART = """\
detector_attacks:
  - {name: fgsm, budgets: [0.1]}
detectors:
  - name: bimodel-mismatch
    images: 400
    train_attacks: [fgsm]
    adaptive_attacks: [{name: pgd-linf, budgets: [0.3]}]
"""
FGSM = "  - name: fgsm\n    budgets: [0.1, 0.3]"
DIGITS = "    eval_size: 60"


def _tiny(old: str, new: str, *, detectors: bool = False) -> str:
    text = TINY_SUITE + (DETECTOR_PART if detectors else "")
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1)


REJECTED_BEFORE_RUNNING = [
    # 1. split sizes the dataset cannot give, known from its registry entry without loading it
    pytest.param(_tiny(DIGITS, DIGITS + "\n    params: {test_fraction: 0}"), "datasets[0].params",
                 "test_fraction must be strictly between 0 and 1, got 0", id="test-fraction-0"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    params: {test_fraction: 1.5}"), "datasets[0].params",
                 "test_fraction must be strictly between 0 and 1", id="test-fraction-above-1"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    params: {test_fraction: 0.001}"), "datasets[0].params",
                 "a stratified split needs at least 10", id="test-fraction-too-small-to-stratify"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    train_size: 1500"), "datasets[0].train_size",
                 "the train split of 'digits' has 1437 examples", id="train-size"),
    pytest.param(_tiny("name: digits\n" + DIGITS, "name: mnist5k\n" + DIGITS + "\n    train_size: 4001"),
                 "datasets[0].train_size", "the train split of 'mnist5k' has 4000 examples", id="train-size-mnist5k"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    test_size: 361"), "datasets[0].test_size",
                 "the test split of 'digits' has 360 examples", id="test-size"),
    pytest.param(_tiny(DIGITS, "    eval_size: 361"), "datasets[0].eval_size",
                 "the test split of 'digits' has 360", id="eval-size"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    test_size: 50"), "datasets[0].eval_size",
                 "the test split subset (test_size) of 'digits' has 50", id="eval-size-over-test-size"),
    pytest.param(_tiny("images: 400", "images: 1438", detectors=True), "detectors[0].images",
                 "dataset 'digits' has 1437 in its train split", id="detector-images"),
    # 2. NaN and infinite floats: every registry entry's parameters, and the suite's own
    pytest.param(_tiny("params: {epochs: 4, batch_size: 64}", "params: {epochs: 4, batch_size: 64, lr: .nan}"),
                 "defenses[0].params.lr", "finite number, got nan", id="lr-nan"),
    pytest.param(_tiny("std: 0.2", "std: .inf"), "defenses[1].params.std", "finite number, got inf", id="std-inf"),
    pytest.param(_tiny("rel_stepsize: 0.5", "rel_stepsize: -.inf"), "attacks[1].params.rel_stepsize",
                 "finite number, got -inf", id="attack-param-inf"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    params: {test_fraction: .nan}"), "datasets[0].params.test_fraction",
                 "finite number, got nan", id="dataset-param-nan"),
    pytest.param(_tiny("params: {epochs: 4, batch_size: 64}",
                       "params: {epochs: 4, batch_size: 64, arch: strauss-mnist, arch_params: {dropout: .nan}}"),
                 "defenses[0].params", "architecture 'strauss-mnist': dropout: Input should be a finite number",
                 id="architecture-param-nan"),
    pytest.param(_tiny(FGSM, "  - name: fgsm\n    budgets: [.inf]"), "attacks[0].budgets[0]",
                 "must be finite, got inf", id="budget-inf"),
    pytest.param(_tiny("seeds: [0]", "seeds: [0]\nheadline: {linf: .nan}"), "headline.linf",
                 "finite number, got nan", id="headline-nan"),
    pytest.param(_tiny("images: 400", "images: 400\n    fpr: .nan", detectors=True), "detectors[0].fpr",
                 "finite number, got nan", id="fpr-nan"),
    pytest.param(_tiny("budgets: [0.3]}", "budgets: [0.3], detector_weights: [1, .inf]}", detectors=True),
                 "detectors[0].adaptive_attacks[0].detector_weights[1]", "finite number, got inf",
                 id="detector-weight-inf"),
    # 3. seeds numpy and scikit-learn accept
    pytest.param(_tiny("seeds: [0]", "seeds: [0, 100000000000000000000000]"), "seeds[1]",
                 "a seed must be from 0 to 2**32 - 1", id="seed-1e23"),
    pytest.param(_tiny("seeds: [0]", "seeds: [18446744073709551616]"), "seeds[0]", "2**32 - 1", id="seed-2**64"),
    pytest.param(_tiny("seeds: [0]", "seeds: [-1]"), "seeds[0]", "got -1", id="seed-negative"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    subset_seed: 4294967296"), "datasets[0].subset_seed",
                 "got 4294967296", id="subset-seed-2**32"),
    pytest.param(_tiny(DIGITS, DIGITS + "\n    params: {split_seed: 18446744073709551616}"),
                 "datasets[0].params.split_seed", "2**32 - 1", id="split-seed-2**64"),
    # 4. a key given twice, at any depth
    pytest.param(_tiny("seeds: [0]", "seeds: [0]\nseeds: [1]"), "seeds",
                 "line 3, column 1: duplicate key 'seeds' (first at line 2, column 1)", id="duplicate-top-level"),
    pytest.param(_tiny("std: 0.2,", "std: 0.2, std: 0.9,"), "defenses[1].params.std",
                 "line 14, column 24: duplicate key 'std' (first at line 14, column 14)", id="duplicate-in-params"),
    pytest.param(_tiny("    label: gauss\n", "    label: gauss\n    label: other\n"), "defenses[1].label",
                 "line 14, column 5: duplicate key 'label' (first at line 13, column 5)", id="duplicate-in-list-item"),
    pytest.param(_tiny("adaptive_attacks: [{name: pgd-linf,", "adaptive_attacks: [{name: pgd-linf, name: fgsm,",
                       detectors=True),
                 "detectors[0].adaptive_attacks[0].name", "duplicate key 'name'", id="duplicate-deeply-nested"),
    # 5. an empty list where leaving the key out means "all"
    pytest.param(_tiny(FGSM, FGSM + "\n    defenses: []"), "attacks[0].defenses",
                 "empty list: leave the key out to attack every defense, or name at least one", id="defenses-empty"),
    pytest.param(_tiny(FGSM, FGSM + "\n    evaluate_on: []"), "attacks[0].evaluate_on",
                 "empty list: leave the key out to score on each defense's deployed model", id="evaluate-on-empty"),
    pytest.param(_tiny("train_attacks: [fgsm]", "train_attacks: []", detectors=True), "detectors[0].train_attacks",
                 "empty list: leave the key out to train on every detector attack", id="train-attacks-empty"),
    pytest.param(_tiny("train_attacks: [fgsm]", "test_attacks: []", detectors=True), "detectors[0].test_attacks",
                 "empty list: leave the key out to test on the train_attacks", id="test-attacks-empty"),
    # 6. budgets beyond their kind's bound (L2: the diameter of the dataset's input space, 8 for 8x8 digits)
    pytest.param(_tiny(FGSM, "  - name: pgd-l2\n    budgets: [1e308]"), "attacks[0].budgets[0]",
                 "L2 eps 1e+308 exceeds 8, the largest L2 distance between two 1x8x8 images", id="l2-1e308"),
    pytest.param(_tiny(FGSM, "  - name: pgd-l2\n    budgets: [8, 8.5]"), "attacks[0].budgets[1]",
                 "L2 eps 8.5 exceeds 8", id="l2-beyond-diameter"),
    pytest.param(_tiny(FGSM, "  - name: gaussian-noise\n    budgets: [100]"), "attacks[0].budgets[0]",
                 "L2 eps 100.0 exceeds 8", id="corruption-l2"),
    pytest.param(_tiny(FGSM, "  - name: cw-l2\n    budgets: [1e7]"), "attacks[0].budgets[0]",
                 "the constant c 10000000.0 exceeds 1e+06", id="cw-c"),
    pytest.param(_tiny(FGSM, "  - name: jsma\n    budgets: [2]"), "attacks[0].budgets[0]",
                 "gamma is a fraction of the features and must be in (0, 1]", id="gamma"),
    pytest.param(_tiny("seeds: [0]", "seeds: [0]\nheadline: {l2: 1e308}"), "headline.l2",
                 "at most 8 for 1x8x8 images", id="headline-l2"),
    pytest.param(_tiny("{name: fgsm, budgets: [0.1]}", "{name: deepfool, budgets: [1e308]}", detectors=True),
                 "detector_attacks[0].budgets[0]", "L2 eps 1e+308 exceeds 8", id="detector-attack-budget"),
]


@pytest.mark.parametrize("text, key, message", REJECTED_BEFORE_RUNNING)
def test_what_failed_mid_run_is_a_validation_error(write_suite, capsys, tmp_path, text, key, message):
    path = write_suite(text)
    code, out, err = run_cli(capsys, "validate", path)
    assert code == 2 and not out
    lines = err.splitlines()  # one problem per line (the detector-attack case has a second: train_attacks)
    assert "Traceback" not in err and all(line.startswith(f"{path}: ") for line in lines[1:]), err
    assert err.startswith(f"advbench: error: {path}: {key}: ") and message in lines[0], err

    store, board = tmp_path / "store", tmp_path / "board"
    code, out, err_run = run_cli(capsys, "run", path, "--store", store, "--leaderboard", board,
                                 "--data-dir", tmp_path / "data")
    assert code == 2 and err_run == err
    assert not store.exists() and not board.exists(), "a rejected suite must write nothing"


def test_the_cases_above_are_valid_without_their_one_change(write_suite, capsys):
    """The suites the cases edit are good ones: each case fails for its own edit alone."""
    for text in (TINY_SUITE, TINY_SUITE + DETECTOR_PART):
        code, out, err = run_cli(capsys, "validate", write_suite(text))
        assert code == 0 and not err, err


def test_budget_bounds_follow_the_input_shape(write_suite, capsys):
    """An L2 budget is bounded by the diameter of each dataset's input space: 28 for 28x28 MNIST, where it is
    8 for the 8x8 digits; a suite with both takes what both can take."""
    pgd_l2 = TINY_SUITE.replace(FGSM, "  - name: pgd-l2\n    budgets: [20, 28]")
    mnist = pgd_l2.replace("name: digits", "name: mnist5k")
    assert run_cli(capsys, "validate", write_suite(mnist))[0] == 0
    code, _, err = run_cli(capsys, "validate", write_suite(mnist.replace("[20, 28]", "[20, 28.5]")))
    assert code == 2 and "attacks[0].budgets[1]: L2 eps 28.5 exceeds 28, the largest L2 distance between two " \
                         "1x28x28 images" in err
    both = mnist.replace("datasets:\n", "datasets:\n  - {name: digits, eval_size: 60}\n")
    code, _, err = run_cli(capsys, "validate", write_suite(both))
    assert code == 2 and "attacks[0].budgets[0]: L2 eps 20.0 exceeds 8" in err


def test_an_unset_eval_size_attacks_the_whole_smaller_test_split(write_suite, capsys):
    """eval_size's default (1000) is a cap, not a demand: digits' 360 test images are all attacked."""
    text = TINY_SUITE.replace("    eval_size: 60\n", "")
    assert "eval_size" not in text
    assert run_cli(capsys, "validate", write_suite(text))[0] == 0


def test_keys_merged_with_yaml_anchors_may_be_overridden(write_suite, capsys):
    """``<<: *anchor`` then a key of the anchor's: YAML's own override, not a duplicate."""
    text = TINY_SUITE.replace("  - name: undefended\n    params: {epochs: 4, batch_size: 64}",
                              "  - name: undefended\n    params: &train {epochs: 4, batch_size: 64}")
    text = text.replace("params: {std: 0.2, epochs: 4, batch_size: 64}", "params: {<<: *train, std: 0.2, epochs: 3}")
    suite = load_suite(write_suite(text))
    assert suite.defenses[1].params["epochs"] == 3 and suite.defenses[1].params["batch_size"] == 64


def test_yaml_tags_stay_refused(write_suite, capsys):
    """The duplicate-key loader is still PyYAML's safe loader: a Python tag is malformed YAML, not an object."""
    code, _, err = run_cli(capsys, "validate", write_suite("name: !!python/object/apply:os.getcwd []\n"))
    assert code == 2 and "malformed YAML" in err and "python/object/apply" in err


@pytest.mark.parametrize("name, test_fraction", [("digits", 0.2), ("digits", 0.33), ("digits", 0.0056),
                                                 ("digits", 0.9), ("mnist5k", 0.2)])
def test_dataset_sizes_meta_matches_the_loaded_splits(name, test_fraction):
    """What validation compares train_size/test_size/eval_size with is what loading the dataset gives."""
    from bench.data import DataContext, load_dataset
    from bench.registry import datasets

    params = datasets.get(name).validate({"test_fraction": test_fraction})
    data = load_dataset(name, params, DataContext("data"))
    assert datasets.get(name).meta["sizes"](params) == (len(data.train_y), len(data.test_y))
    assert datasets.get(name).meta["shape"] == tuple(data.train_x.shape[1:])


def test_every_builtin_dataset_knows_its_sizes_and_shape():
    from bench.registry import datasets

    for entry in datasets.entries():
        if entry.factory.__module__.startswith("bench.data."):
            assert "sizes" in entry.meta and "shape" in entry.meta, entry.name
            if entry.meta["sizes"] is None:  # declared unknown: a folder the user fills (notmnist)
                continue
            params = entry.validate({})
            train, test = entry.meta["sizes"](params)
            assert train > 0 and test > 0 and len(entry.meta["shape"]) == 3, entry.name
