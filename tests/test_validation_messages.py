"""Issue 25's suite validation: bad input is one clear line per problem, naming file and key (exit 2,
nothing written); what is wasteful but not wrong is one warning line (exit 0).

* a detector's ``classifier`` is a registry name (``bench.registry.classifiers``), never an import;
* counts that scale the cost (epochs, steps, ...) are bounded (``bench.registry.COST_LIMITS``);
* budgets and float parameters take fractions ``a/b``;
* the messages for a budget given as a parameter, a detector attacked as a defense, a backend the attack
  lacks, several problems at once;
* a headline budget no attack runs at (refused), eot on a deterministic defense (warned).
"""

from __future__ import annotations

import sys
import textwrap
import typing
from typing import Annotated

import pydantic
import pytest

from bench.cli import main
from bench.config import load_suite
from bench.errors import UserError
from bench.plan import build_plan
from bench.registry import COST_LIMITS, REGISTRIES, CostLimit, Registry, classifiers, cost_limit, defenses

SUITE = """\
name: messages
seeds: [0]
device: cpu
checks: false
datasets:
  - {name: digits, eval_size: 60}
defenses:
  - {name: undefended, params: {epochs: 1}}
attacks:
  - {name: fgsm, budgets: [0.1, 0.3]}
  - {name: bim, params: {steps: 5}, budgets: [0.1]}
"""

DETECTOR = """\
detector_attacks:
  - {name: fgsm, budgets: [0.1]}
detectors:
  - name: bimodel-mismatch
    label: mismatch
    params: {model_a: monteiro-mlp, classifier: svc}
    images: 400
"""


def validate(capsys, write_suite, text: str):
    """``advbench validate`` on ``text``: (exit status, stdout, stderr lines, the suite's path)."""
    path = write_suite(textwrap.dedent(text))
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err.splitlines(), path


def rejected(capsys, write_suite, text: str, problems: int = 1) -> tuple[list[str], str]:
    """The problem lines of a suite that fails validation (``problems`` of them), without the CLI's prefix,
    each checked to start with the file's name; and the path."""
    code, out, err, path = validate(capsys, write_suite, text)
    assert code == 2 and not out, err
    assert "Traceback" not in "\n".join(err) and len(err) == problems, err
    lines = [err[0].removeprefix("advbench: error: "), *err[1:]]
    assert all(line.startswith(f"{path}: ") for line in lines), err
    return [line.removeprefix(f"{path}: ") for line in lines], str(path)


# ---- 1. a detector's classifier is a registry name ----------------------------------------------------------


def test_classifiers_are_a_registry_of_the_scikit_learn_ones():
    assert REGISTRIES["classifiers"] is classifiers
    assert {"svc", "logistic-regression", "random-forest", "mlp"} <= set(classifiers.names())
    assert classifiers.group == "advbench.classifiers"
    from bench.detection.classifiers import make_classifier

    svc = make_classifier("svc", {"C": 2.0}, seed=3)
    assert type(svc).__name__ == "SVC" and svc.kernel == "rbf" and svc.C == 2.0 and svc.random_state == 3
    assert make_classifier("random-forest", {"random_state": 7}, seed=3).random_state == 7  # params win
    assert make_classifier("logistic-regression").max_iter == 1000
    with pytest.raises(ValueError, match="did you mean 'svc'"):
        make_classifier("svm")
    with pytest.raises(ValueError, match="unknown classifier 'sklearn.ensemble.GradientBoostingClassifier'"):
        make_classifier("sklearn.ensemble.GradientBoostingClassifier")  # a name, never an import path
    with pytest.raises(ValueError, match="classifier 'svc': .*no_such_keyword"):
        make_classifier("svc", {"no_such_keyword": 1})


def test_a_classifier_that_names_a_module_imports_nothing(capsys, write_suite):
    already = "this" in sys.modules
    lines, _ = rejected(capsys, write_suite, SUITE + DETECTOR.replace("classifier: svc", "classifier: this.Zen"))
    assert lines == ["detectors[0].params.classifier: unknown classifier 'this.Zen'; known: logistic-regression, "
                     "mlp, random-forest, svc (a classifier is a registered name, not an import path: a package "
                     "registers its own through the advbench.classifiers entry-point group)"]
    assert already or "this" not in sys.modules, "validating a classifier's name imported the module it names"


def test_a_misspelt_classifier_gets_close_matches(capsys, write_suite):
    lines, _ = rejected(capsys, write_suite, SUITE + DETECTOR.replace("classifier: svc", "classifier: svm"))
    assert lines == ["detectors[0].params.classifier: unknown classifier 'svm'; did you mean 'svc'?"]
    code, out, err, _ = validate(capsys, write_suite,
                                 SUITE + DETECTOR.replace("classifier: svc", "classifier: random-forest"))
    assert code == 0 and "ok" in out and not err, err


def test_a_plugin_registers_a_classifier_through_entry_points(tmp_path, monkeypatch):
    (tmp_path / "advbench_classifier_demo.py").write_text(textwrap.dedent('''
        class MeanThreshold:
            """Plugin classifier: attack if the features' mean is above the training mean."""
            def __init__(self, *, margin: float = 0.0):
                self.margin = margin
            def fit(self, x, y):
                self.cut = float(x.mean()) + self.margin
                return self
            def predict(self, x):
                return (x.mean(axis=1) > self.cut).astype(int)
    '''))
    dist = tmp_path / "advbench_classifier_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: advbench-classifier-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[advbench.classifiers]\nmean-threshold = advbench_classifier_demo:MeanThreshold\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    classifiers.names()  # the built-ins first
    monkeypatch.setattr(classifiers, "_entries", dict(classifiers._entries))  # undo the registration afterwards
    classifiers.load_plugins()

    from bench.detection.classifiers import make_classifier

    assert make_classifier("mean-threshold", {"margin": 0.5}).margin == 0.5
    assert defenses.get("bimodel-mismatch").validate({"classifier": "mean-threshold"})["classifier"] == "mean-threshold"


# ---- 2. counts that scale the cost are bounded ----------------------------------------------------------------


def test_a_billion_epochs_is_one_line_naming_file_key_and_limit(capsys, write_suite):
    lines, _ = rejected(capsys, write_suite, SUITE.replace("params: {epochs: 1}", "params: {epochs: 1000000000}"))
    assert lines[0].startswith("defenses[0].params.epochs: 1000000000 exceeds the limit of 10,000 (")
    assert "a bound against a typo that would run until killed" in lines[0]


def test_bounds_hold_for_attacks_and_nested_entries(capsys, write_suite):
    text = SUITE.replace("params: {steps: 5}", "params: {steps: 100001}").replace(
        "{name: undefended, params: {epochs: 1}}",
        "{name: ensemble, params: {members: 1001, epochs: 1}}")
    lines, _ = rejected(capsys, write_suite, text, problems=2)
    assert lines[0].startswith("defenses[0].params.members: 1001 exceeds the limit of 1,000 (")
    assert lines[1].startswith("attacks[1].params.steps: 100001 exceeds the limit of 100,000 (")
    # at the limit: fine
    assert main(["validate", str(write_suite(SUITE.replace("params: {steps: 5}", "params: {steps: 100000}")))]) == 0


def _cost_params():
    for kind in ("datasets", "architectures", "defenses", "attacks", "baseline-detectors"):
        for entry in REGISTRIES[kind].entries():
            for p in entry.params:
                if cost_limit(p.name) is not None and int in (p.annotation, *typing.get_args(p.annotation)):
                    yield pytest.param(entry, p, id=f"{kind}:{entry.name}:{p.name}")


@pytest.mark.parametrize("entry, param", list(_cost_params()))
def test_every_cost_count_of_every_entry_is_bounded(entry, param):
    limit = cost_limit(param.name).limit
    with pytest.raises(pydantic.ValidationError) as info:
        entry.validate({param.name: limit + 1})
    assert [e["type"] for e in info.value.errors() if e["loc"][0] == param.name] == ["cost_limit"]
    try:
        entry.validate({param.name: limit})
    except pydantic.ValidationError as e:  # another parameter may be required; this one is fine at its limit
        assert all(err["loc"][0] != param.name for err in e.errors())


def test_the_cost_counts_of_the_built_in_entries_are_all_covered():
    """Each parameter that multiplies a task's work has a bound, and each bound is above the shipped suites."""
    names = {p.name for kind in ("defenses", "attacks") for entry in REGISTRIES[kind].entries() for p in entry.params}
    for name in ("epochs", "feature_epochs", "steps", "binary_search_steps", "restarts", "queries", "square_queries",
                 "repeats", "members", "eot", "eot_draws", "ensemble_size", "sub_models", "train_samples",
                 "test_samples", "target_classes", "candidates"):
        assert name in names and cost_limit(name) is not None, name
    for name in ("max_iter", "n_iter", "n_queries", "draws", "iterations"):  # plugins' usual names
        assert cost_limit(name) is not None, name
    assert cost_limit("batch_size") is None and cost_limit("eval_size") is None and cost_limit("seed") is None
    assert all(limit.limit >= 1000 and limit.why for limit in COST_LIMITS.values())


def test_a_parameter_declares_its_own_cost_limit():
    reg = Registry("thing", "advbench.test-things")

    @reg.register("counted")
    def counted(*, width: Annotated[int, CostLimit(5, "five is plenty")] = 1,
                steps: Annotated[int, CostLimit(None)] = 1, restarts: int | None = None) -> int:
        return width

    entry = reg.get("counted")
    assert entry.validate({"width": 5, "steps": 10**9, "restarts": None}) == {"width": 5, "steps": 10**9,
                                                                             "restarts": None}
    with pytest.raises(pydantic.ValidationError, match=r"6 exceeds the limit of 5 \(five is plenty\)"):
        entry.validate({"width": 6})
    with pytest.raises(pydantic.ValidationError, match="exceeds the limit of 1,000"):
        entry.validate({"restarts": 1001})  # by its name, inside an Optional


# ---- 3. fractions ---------------------------------------------------------------------------------------------


def test_budgets_and_float_parameters_take_fractions(write_suite, capsys):
    text = SUITE.replace("budgets: [0.1, 0.3]", "budgets: [8/255, 0.3]").replace(
        "params: {steps: 5}", "params: {steps: 5, step_size: 2/255}") + "headline: {linf: 8/255}\n"
    suite = load_suite(write_suite(text))
    assert suite.attacks[0].budgets == [8 / 255, 0.3]
    assert suite.attacks[1].params["step_size"] == 2 / 255
    assert suite.headline == {"linf": 8 / 255}
    # The task keys hold the float: the same tasks as the suite that writes the float out.
    floats = text.replace("8/255", repr(8 / 255)).replace("2/255", repr(2 / 255))
    assert build_plan(suite).keys == build_plan(load_suite(write_suite(floats, "floats.yaml"))).keys
    assert {t.config["budget"] for t in build_plan(suite).by_kind("craft")} >= {8 / 255}
    code, out, err, _ = validate(capsys, write_suite, text)
    assert code == 0 and not err, err


@pytest.mark.parametrize("old, new, key, message", [
    ("budgets: [0.1, 0.3]", "budgets: [8/0]", "attacks[0].budgets[0]", "the fraction 8/0 divides by zero"),
    ("budgets: [0.1, 0.3]", "budgets: [a/b]", "attacks[0].budgets[0]",
     "'a/b' is not a number or a fraction a/b of two numbers (such as 8/255)"),
    ("params: {steps: 5}", "params: {steps: 5, step_size: 2/0}", "attacks[1].params.step_size",
     "the fraction 2/0 divides by zero"),
    ("params: {steps: 5}", "params: {steps: 5, step_size: 2//255}", "attacks[1].params.step_size",
     "'2//255' is not a number or a fraction a/b of two numbers (such as 8/255)"),
])
def test_a_malformed_fraction_is_one_line_naming_the_key(capsys, write_suite, old, new, key, message):
    lines, _ = rejected(capsys, write_suite, SUITE.replace(old, new))
    assert lines == [f"{key}: {message}"]


# ---- 4. messages ----------------------------------------------------------------------------------------------


def test_a_budget_given_as_a_parameter_says_where_budgets_go(capsys, write_suite):
    text = SUITE.replace("params: {steps: 5}", "params: {eps: 0.3, steps: 5}") + \
        "  - {name: cw-l2, params: {c: 1, steps: 5}, budgets: [1]}\n"
    lines, _ = rejected(capsys, write_suite, text, problems=2)
    assert lines == ["attacks[1].params.eps: the budget is not a parameter; list it under attacks[1].budgets "
                     "(a list: bim runs once per budget)",
                     "attacks[2].params.c: the budget is not a parameter; list it under attacks[2].budgets "
                     "(a list: cw-l2 runs once per budget)"]


def test_a_detector_named_as_an_attacked_defense_says_how_detectors_are_attacked(capsys, write_suite):
    text = SUITE.replace("budgets: [0.1, 0.3]}", "budgets: [0.1, 0.3], defenses: [mismatch]}") + DETECTOR
    lines, _ = rejected(capsys, write_suite, text)
    assert lines == ["attacks[0].defenses: 'mismatch' is a detector (detectors[0]), which an attack entry cannot "
                     "attack: a detector's data is built by detector_attacks, and a detector-aware attack on the "
                     "classifier it guards (the detector folded in as an extra class) goes under "
                     "detectors[0].adaptive_attacks"]


def test_a_backend_the_attack_lacks_names_the_entry_key_and_its_backends(capsys, write_suite):
    text = SUITE + "  - {name: jsma, backend: torch, budgets: [0.1]}\n"
    lines, _ = rejected(capsys, write_suite, text)
    assert lines == ["attacks[2].backend: 'jsma' has no backend 'torch'; its backends: art (the default)"]
    text = SUITE + "  - {name: cw-l2, backend: tensorflow, budgets: [1]}\n"
    lines, _ = rejected(capsys, write_suite, text)
    assert lines == ["attacks[2].backend: 'cw-l2' has no backend 'tensorflow'; its backends: foolbox (the default), "
                     "art, torch"]


def test_several_problems_are_one_line_each(capsys, write_suite):
    text = SUITE.replace("name: fgsm", "name: fgsn").replace("params: {steps: 5}", "params: {steps: five}") \
        .replace("params: {epochs: 1}", "params: {epochs: 1, lr: .nan}")
    lines, _ = rejected(capsys, write_suite, text, problems=3)
    assert [line.split(": ")[0] for line in lines] == ["defenses[0].params.lr", "attacks[0].name",
                                                       "attacks[1].params.steps"]
    assert lines[1] == "attacks[0].name: unknown attack 'fgsn'; did you mean 'fgsm'?"


def test_a_user_error_renders_each_problem_on_its_own_line():
    error = UserError(["s.yaml: a: one; with a semicolon", "s.yaml: b: two"])
    assert error.problems == ["s.yaml: a: one; with a semicolon", "s.yaml: b: two"]
    assert str(error) == "s.yaml: a: one; with a semicolon\ns.yaml: b: two"
    assert UserError("s.yaml: one").problems == ["s.yaml: one"] and str(UserError("s.yaml: one")) == "s.yaml: one"


# ---- 5. accepted silently before: a headline no attack runs at, eot on a deterministic defense ----------------


def test_a_headline_no_attack_runs_at_is_refused_with_the_budgets_that_run(capsys, write_suite):
    lines, _ = rejected(capsys, write_suite, SUITE + "headline: {linf: 0.25}\n")
    assert lines == ["headline.linf: no attack runs at L∞ eps 0.25: the leaderboard would fall back to another "
                     "budget without a word; the L∞ eps budgets that run: 0.1, 0.3"]
    lines, _ = rejected(capsys, write_suite, SUITE.replace("[0.1, 0.3]", "[0.1, 0.0313725]") +
                        "headline: {linf: 8/255}\n")
    assert lines[0].endswith("the L∞ eps budgets that run: 0.0313725, 0.1; did you mean 0.0313725 (the budgets must "
                             "be the same number)?")


def test_a_headline_for_a_threat_model_without_attacks_is_a_warning(capsys, write_suite):
    code, out, err, path = validate(capsys, write_suite, SUITE + "headline: {linf: 0.3, l2: 2.0}\n")
    assert code == 0 and "ok" in out
    assert err == [f"advbench: warning: {path}: headline.l2: no attack of the suite runs in L2: this headline "
                   f"changes nothing; remove it, or add an attack of that threat model"]
    # Minimum-norm attacks only (C&W's budget is c): the best known at L2 eps 2 counts them by their sizes.
    with_cw = SUITE + "  - {name: cw-l2, params: {steps: 5}, budgets: [1.0]}\nheadline: {linf: 0.3, l2: 2.0}\n"
    code, out, err, path = validate(capsys, write_suite, with_cw)
    assert code == 0 and "ok" in out and err == []


RANDOMIZED = SUITE.replace("  - {name: undefended, params: {epochs: 1}}\n",
                           "  - {name: undefended, params: {epochs: 1}}\n  - {name: rse, params: {epochs: 1}}\n")


def test_eot_on_a_deterministic_defense_is_a_warning(capsys, write_suite):
    text = RANDOMIZED + "  - {name: pgd-linf, params: {steps: 2, eot: 10}, budgets: [0.1]}\n"
    code, out, err, path = validate(capsys, write_suite, text)
    assert code == 0 and "ok" in out
    assert err == [f"advbench: warning: {path}: attacks[2].params.eot: eot: 10 on the deterministic defense "
                   f"'undefended': ten times the work for the same gradient; attack only the stochastic ones "
                   f"(defenses: [rse])"]
    again = write_suite(text, "again.yaml")
    assert load_suite(again).warnings == [err[0].removeprefix("advbench: warning: ").replace(str(path), str(again))]


def test_eot_on_stochastic_defenses_only_is_quiet(capsys, write_suite):
    text = RANDOMIZED + "  - {name: pgd-linf, params: {steps: 2, eot: 10}, budgets: [0.1], defenses: [rse]}\n"
    code, out, err, _ = validate(capsys, write_suite, text)
    assert code == 0 and "ok" in out and not err, err
    text = SUITE + "  - {name: bim, label: bim-eot, params: {eot: 3}, budgets: [0.1], transfer_from: undefended}\n"
    code, out, err, path = validate(capsys, write_suite, text)
    assert code == 0 and err == [f"advbench: warning: {path}: attacks[2].params.eot: eot: 3 on the deterministic "
                                 f"defense 'undefended': three times the work for the same gradient; eot is for "
                                 f"stochastic defenses (test-time randomness): use eot: 1"]
