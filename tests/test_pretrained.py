"""The ``pretrained`` defense (defenses/pretrained.py): each way to build the network, the weights file's
hash in the task keys, normalization folded into the model, and every bad input as one line at validation."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.config import load_suite
from bench.data import DataContext
from bench.errors import UserError
from bench.models import InputSpec, Normalize
from bench.plan import build_plan
from bench.registry import defenses
from bench.runner import RunContext
from bench.runner.local import LocalExecutor
from bench.store import Store

from tests.conftest import trained_defense

NETS = '''\
from torch import nn

from bench.models import InputSpec, build_architecture


def digits_mlp(num_classes=10):
    """The harness's monteiro-mlp for 8x8 digits: what `undefended` with arch monteiro-mlp builds."""
    return build_architecture("monteiro-mlp", InputSpec(1, 8, 8, num_classes), {})


def mlp(pixels=64, classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 32), nn.ReLU(), nn.Linear(32, classes))


NOT_CALLABLE = 3
'''


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    """A file of network factories (the user's own model code)."""
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def _mlp(pixels: int = 64, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 32), nn.ReLU(), nn.Linear(32, classes))


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def _suite(write_suite, defenses_yaml: str, attacks_yaml: str = "  - {name: fgsm, budgets: [0.2]}\n") -> Path:
    return write_suite("name: pt\nseeds: [0]\ndevice: cpu\nbatch_size: 128\n"
                       "datasets:\n  - {name: digits, eval_size: 60}\n"
                       "defenses:\n" + textwrap.indent(textwrap.dedent(defenses_yaml), "  ")
                       + "attacks:\n" + attacks_yaml)


def _run(suite_path: Path, store_dir: Path):
    """Validate, plan and run a suite in this process; (plan, summary)."""
    suite = load_suite(suite_path)
    plan = build_plan(suite)
    store = Store(store_dir)
    try:
        store.set_suite_plan(suite.name, plan.keys)
        ctx = RunContext(store_dir=store_dir, data=DataContext(Path("data")), device="cpu",
                         batch_size=suite.batch_size, progress=False, suite=suite.name)
        summary = LocalExecutor(echo=lambda line: None).run(plan, ctx, store)
    finally:
        store.close()
    assert summary.ok, summary.failed
    return plan, summary


def _rows(store_dir: Path):
    """The suite's own result rows (not the soundness checks' ``check:*`` rows, where they run)."""
    store = Store(store_dir)
    try:
        rows = store.results()
    finally:
        store.close()
    return rows[~rows["source"].fillna("").str.startswith("check:")]


# ---- the builders ---------------------------------------------------------------------------------

def test_factory_from_a_package_and_from_a_file(nets, tmp_path, monkeypatch, digits):
    weights = _save(_mlp().state_dict(), tmp_path / "w.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    outputs = []
    for factory in ("nets:mlp", f"{nets}:mlp"):
        d = defenses.get("pretrained").build(factory=factory, weights=str(weights))
        d.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
        d.fit(digits, seed=0, progress=False)
        outputs.append(d.deployed()(digits.test_x[:5]))
    reference = _mlp()
    reference.load_state_dict(torch.load(weights, weights_only=True))
    for out in outputs:  # the file's weights, whichever way the factory was named
        torch.testing.assert_close(out, reference(digits.test_x[:5]), rtol=0, atol=0)


def test_factory_params_reach_the_factory(nets, tmp_path, digits):
    d = defenses.get("pretrained").build(factory=f"{nets}:mlp", factory_params={"classes": 7})
    d.setup(InputSpec(1, 8, 8, 7), seed=0, device=torch.device("cpu"))
    assert d.deployed()(digits.test_x[:3]).shape == (3, 7)


def test_torchvision_weights_are_not_fetched_at_validation(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("validation must not download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    d = defenses.get("pretrained").build(torchvision="resnet18", torchvision_weights="IMAGENET1K_V1")
    d.check_input_shape((3, 32, 32))
    with pytest.raises(ValueError, match=r"cannot take images of shape \(1, 8, 8\)"):
        d.check_input_shape((1, 8, 8))


def test_torchvision_without_weights_builds_for_the_dataset():
    d = defenses.get("pretrained").build(torchvision="resnet18", num_classes=10)
    d.check_input_shape((3, 32, 32))  # validation's check, on the meta device
    d.setup(InputSpec(3, 32, 32, 10), seed=0, device=torch.device("cpu"))
    assert d.deployed()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # seeded: the same seed gives the same (random) network, so its task key means one model
    again = defenses.get("pretrained").build(torchvision="resnet18", num_classes=10)
    again.setup(InputSpec(3, 32, 32, 10), seed=0, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), again.state_dict().values()))


def test_robustbench_through_its_loader(monkeypatch, tmp_path, digits):
    """robustbench downloads on the user's machine; here its loader is replaced by one reading a local file."""
    weights = _save(_mlp().state_dict(), tmp_path / "rb.pt")
    calls = []

    def load_model(*, model_name, model_dir, dataset, threat_model):
        calls.append((model_name, model_dir, dataset, threat_model))
        model = _mlp()
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model.eval()

    package = types.ModuleType("robustbench")
    package.utils = types.ModuleType("robustbench.utils")
    package.utils.load_model = load_model
    monkeypatch.setitem(sys.modules, "robustbench", package)
    monkeypatch.setitem(sys.modules, "robustbench.utils", package.utils)

    d = defenses.get("pretrained").build(robustbench="Standard", threat_model="L2", dataset="cifar10",
                                         model_dir=str(tmp_path))
    d.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    d.fit(digits, seed=0, progress=False)
    assert calls[-1] == ("Standard", str(tmp_path), "cifar10", "L2")
    expected = load_model(model_name="Standard", model_dir=str(tmp_path), dataset="cifar10", threat_model="L2")
    torch.testing.assert_close(d.deployed()(digits.test_x[:4]), expected(digits.test_x[:4]), rtol=0, atol=0)


def test_robustbench_missing_is_one_line(write_suite, monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import fails as when it is not installed
    path = _suite(write_suite, "- {name: pretrained, params: {robustbench: Standard}}\n")
    with pytest.raises(UserError, match=r"defenses\[0\]\.params: robustbench: .*pip install 'advbench\[robustbench\]'"):
        load_suite(path)


# ---- task keys: the weights file's hash ------------------------------------------------------------

def test_the_weights_hash_is_in_the_key(nets, tmp_path, write_suite):
    weights = _save(_mlp().state_dict(), tmp_path / "w.pt")
    suite = _suite(write_suite, f"- {{name: pretrained, params: {{factory: '{nets}:mlp', weights: '{weights}'}}}}\n")
    store = tmp_path / "store"
    plan, first = _run(suite, store)
    assert first.ran == len(plan.tasks)
    train = plan.by_kind("train")[0]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert train.config["defense"]["params"]["weights_sha256"] == sha
    # stored rows record the file's path and hash
    for config in _rows(store)["defense_config"]:
        params = json.loads(config)["params"]
        assert (params["weights"], params["weights_sha256"]) == (str(weights), sha)

    os.utime(weights, ns=(weights.stat().st_atime_ns + 10**9, weights.stat().st_mtime_ns + 10**9))  # touch
    plan_touched, touched = _run(suite, store)
    assert plan_touched.keys == plan.keys and touched.ran == 0

    changed = _mlp()
    torch.manual_seed(1)
    changed = _mlp()
    _save(changed.state_dict(), weights)  # new content, same path
    plan_changed, rerun = _run(suite, store)
    assert set(plan_changed.keys).isdisjoint(plan.keys) and rerun.ran == len(plan_changed.tasks)


def test_a_pinned_hash_refuses_another_file(nets, tmp_path, write_suite):
    weights = _save(_mlp().state_dict(), tmp_path / "w.pt")
    path = _suite(write_suite, f"- {{name: pretrained, params: {{factory: '{nets}:mlp', weights: '{weights}', "
                               f"weights_sha256: '{'0' * 64}'}}}}\n")
    with pytest.raises(UserError, match=r"defenses\[0\]\.params: weights: .*w\.pt: its SHA-256 is [0-9a-f]{64}, "
                                        r"but weights_sha256 pins 0{64}"):
        load_suite(path)


def test_a_file_changed_after_planning_fails_its_task(nets, tmp_path, digits):
    weights = _save(_mlp().state_dict(), tmp_path / "w.pt")
    params = defenses.get("pretrained").factory.resolve_params(
        defenses.get("pretrained").validate({"factory": f"{nets}:mlp", "weights": str(weights)}))
    d = defenses.get("pretrained").factory(**params)  # as the train task builds it
    d.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    torch.manual_seed(5)
    _save(_mlp().state_dict(), weights)  # changed between planning and loading
    with pytest.raises(ValueError, match="changed since the run was planned"):
        d.fit(digits, seed=0, progress=False)
    with pytest.raises(ValueError, match="its SHA-256 is .*, but weights_sha256 pins .*run again"):
        defenses.get("pretrained").factory(**params)  # a task built after the change


# ---- the same weights, trained in-suite or loaded from a file ----------------------------------------

def test_saved_weights_give_the_rows_of_the_in_suite_model(nets, tmp_path, write_suite, digits):
    """What suites/pretrained-mnist-quick.yaml shows, on the digits: a model trained by the harness's own code
    and saved, evaluated beside the same training in-suite, gives the same numbers under other keys."""
    params = {"arch": "monteiro-mlp", "epochs": 3, "batch_size": 64, "lr": 3e-3}
    model = trained_defense(digits, "undefended", seed=0, **params)
    weights = _save(model.deployed().state_dict(), tmp_path / "digits-mlp.pt")
    suite = _suite(write_suite, f"""\
        - {{name: pretrained, label: mine, params: {{factory: '{nets}:digits_mlp', weights: '{weights}'}}}}
        - {{name: undefended, params: {json.dumps(params)}}}
        """, "  - {name: fgsm, budgets: [0.1, 0.3]}\n"
             "  - {name: pgd-linf, params: {steps: 3, random_start: false}, budgets: [0.2]}\n")
    _run(suite, tmp_path / "store")
    rows = _rows(tmp_path / "store")
    metrics = ["n", "clean_acc", "robust_acc", "robust_ci_low", "robust_ci_high", "l2_mean", "linf_mean"]
    mine = rows[rows.defense == "mine"].sort_values(["attack", "budget"]).reset_index(drop=True)
    theirs = rows[rows.defense == "undefended"].sort_values(["attack", "budget"]).reset_index(drop=True)
    assert len(mine) == len(theirs) == 4
    assert mine["clean_acc"].min() > 0.5  # a trained model, not chance
    assert mine[metrics].equals(theirs[metrics])
    assert set(mine["key"]).isdisjoint(theirs["key"])


# ---- normalization folded into the model ------------------------------------------------------------

def test_normalize_is_folded_in_front(nets, tmp_path, write_suite, digits):
    """An attack in [0, 1] pixel space on (bare network + normalize) gives the robust accuracy of the same
    network with the normalization inside it."""
    from bench.training import TrainConfig, train_classifier

    mean, std = [0.3], [0.4]
    torch.manual_seed(0)
    full = nn.Sequential(Normalize(mean, std), _mlp())
    train_classifier(full, digits.train_x, digits.train_y, TrainConfig(epochs=3, batch_size=64, lr=3e-3), seed=0,
                     device=torch.device("cpu"), progress=False)
    bare = _save(full[1].state_dict(), tmp_path / "bare.pt")
    inside = _save(full.state_dict(), tmp_path / "inside.pt")
    (tmp_path / "inside.py").write_text(
        "from torch import nn\nfrom bench.models import Normalize\n\n\ndef net():\n"
        f"    return nn.Sequential(Normalize({mean}, {std}), nn.Sequential(nn.Flatten(), nn.Linear(64, 32), "
        "nn.ReLU(), nn.Linear(32, 10)))\n")
    suite = _suite(write_suite, f"""\
        - {{name: pretrained, label: folded, params: {{factory: '{nets}:mlp', weights: '{bare}',
            normalize: {{mean: {mean}, std: {std}}}}}}}
        - {{name: pretrained, label: inside, params: {{factory: '{tmp_path / "inside.py"}:net', weights: '{inside}'}}}}
        - {{name: pretrained, label: unnormalized, params: {{factory: '{nets}:mlp', weights: '{bare}'}}}}
        """, "  - {name: pgd-linf, params: {steps: 5, random_start: false}, budgets: [0.1]}\n")
    _run(suite, tmp_path / "store")
    rows = _rows(tmp_path / "store").set_index(["defense", "attack"])
    assert rows.loc[("folded", "pgd-linf"), "robust_acc"] == rows.loc[("inside", "pgd-linf"), "robust_acc"]
    assert rows.loc[("folded", "none"), "clean_acc"] == rows.loc[("inside", "none"), "clean_acc"] > 0.5
    # and it matters: the same weights without the normalization are another model
    assert rows.loc[("unnormalized", "none"), "clean_acc"] != rows.loc[("folded", "none"), "clean_acc"]


# ---- one line at validation, naming file and key ------------------------------------------------------

@pytest.mark.parametrize("factory, problem", [
    ("no_colon_here", r"factory: 'no_colon_here': expected 'package\.module:callable'"),
    ("no_such_package_xyz.mod:build", r"factory: 'no_such_package_xyz\.mod:build': cannot import no_such_package_xyz\.mod"),
    ("os.path:no_such_function", r"factory: 'os\.path:no_such_function': os\.path has no 'no_such_function'"),
    ("os:sep", r"factory: 'os:sep': sep is a str, not callable"),
    ("missing/file.py:build", r"factory: 'missing/file\.py:build': no such file missing/file\.py"),
])
def test_bad_factory_strings(write_suite, factory, problem):
    path = _suite(write_suite, f"- {{name: pretrained, params: {{factory: '{factory}'}}}}\n")
    with pytest.raises(UserError, match=rf"suite\.yaml: defenses\[0\]\.params: {problem}") as info:
        load_suite(path)
    assert "\n" not in str(info.value)


def test_bad_files_and_shapes(nets, tmp_path, write_suite):
    good = _save(_mlp().state_dict(), tmp_path / "good.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save(_mlp(), pickled)  # a whole module: needs unpickling code
    wrapped = _save({"state_dict": _mlp().state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    other = _save(_mlp(classes=5).state_dict(), tmp_path / "other.pt")
    cases = [
        (f"factory: '{nets}:mlp', weights: '{tmp_path / 'absent.pt'}'", r"weights: .*absent\.pt: no such file"),
        (f"factory: '{nets}:mlp', weights: '{pickled}'",
         r"weights: .*pickled\.pt: refused: its content needs unpickling code to load \(Unsupported global: GLOBAL "
         r"torch\.nn\.modules\.container\.Sequential"),
        (f"factory: '{nets}:mlp', weights: '{wrapped}'", r"weights: .*checkpoint\.pt: holds a dict that is not a state "
                                                         r"dict .*weights_key names the entry"),
        (f"factory: '{nets}:mlp', weights: '{other}'",
         r"dataset 'digits': weights: .*other\.pt: does not fit the network of factory .*mlp: shape differs: 3\.weight \(5, 32\) vs "
         r"\(10, 32\)"),
        (f"factory: '{nets}:mlp', factory_params: {{pixels: 784}}",
         r"dataset 'digits': input shape: the network of factory .*mlp cannot take images of shape \(1, 8, 8\)"),
        ("torchvision: resnet18", r"dataset 'digits': input shape: the network of torchvision resnet18 cannot take "
                                  r"images of shape \(1, 8, 8\)"),
        ("torchvision: resnet181", r"unknown torchvision model 'resnet181'; did you mean 'resnet18'"),
        (f"factory: '{nets}:mlp', normalize: {{mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}}",
         r"dataset 'digits': normalize: 3 values per channel, but the images have 1 channels"),
        (f"factory: '{nets}:mlp', num_classes: 7", r"dataset 'digits': num_classes: 7, but the network gives 10 scores"),
        (f"factory: '{nets}:mlp', torchvision: resnet18", r"give exactly one of factory, torchvision, robustbench"),
        (f"factory: '{nets}:mlp', threat_model: L2", r"threat_model, dataset and model_dir: only with robustbench"),
        ("torchvision: resnet18, torchvision_weights: IMAGENET9K", r"torchvision_weights: resnet18 has no weights "
                                                                 r"'IMAGENET9K' \(it has: IMAGENET1K_V1\)"),
        ("torchvision: resnet18, torchvision_weights: IMAGENET1K_V1, num_classes: 10",
         r"num_classes: 10, but torchvision's IMAGENET1K_V1 weights score 1000 classes"),
    ]
    for params, problem in cases:
        path = _suite(write_suite, f"- {{name: pretrained, params: {{{params}}}}}\n")
        with pytest.raises(UserError, match=rf"suite\.yaml: defenses\[0\]\.params: {problem}") as info:
            load_suite(path)
        assert "\n" not in str(info.value), params
    # a checkpoint dict is fine with weights_key
    path = _suite(write_suite, f"- {{name: pretrained, params: {{factory: '{nets}:mlp', weights: '{wrapped}', "
                               f"weights_key: state_dict}}}}\n")
    assert load_suite(path).defenses[0].params["weights_key"] == "state_dict"
    assert good.exists()


def test_the_cli_exits_2_with_one_line(nets, tmp_path, write_suite, capsys):
    from bench.cli import main

    path = _suite(write_suite, f"- {{name: pretrained, params: {{factory: '{nets}:mlp', weights: 'gone.pt'}}}}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("defenses[0].params: weights: gone.pt: no such file")


# ---- an ordinary defense: a transfer source --------------------------------------------------------

def test_a_transfer_source(nets, tmp_path, write_suite):
    weights = _save(_mlp().state_dict(), tmp_path / "w.pt")
    suite = _suite(write_suite, f"""\
        - {{name: pretrained, label: mine, params: {{factory: '{nets}:mlp', weights: '{weights}'}}}}
        - {{name: undefended, params: {{arch: monteiro-mlp, epochs: 1, batch_size: 64}}}}
        """, "  - {name: fgsm, label: from-mine, transfer_from: mine, budgets: [0.3]}\n")
    _run(suite, tmp_path / "store")
    rows = _rows(tmp_path / "store")
    scored = rows[rows.attack == "from-mine"]
    assert set(scored["defense"]) == {"mine", "undefended"} and set(scored["source"]) == {"transfer:mine"}


# ---- an ensemble's members and a detector's two models ------------------------------------------------

def _member_files(tmp_path: Path, n: int) -> list[Path]:
    """``n`` weights files of the ``mlp`` factory, each from its own seed (distinct networks)."""
    files = []
    for i in range(n):
        torch.manual_seed(100 + i)
        files.append(_save(_mlp().state_dict(), tmp_path / f"member{i}.pt"))
    return files


def _loaded_mlp(path: Path) -> nn.Module:
    net = _mlp()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


def test_an_ensemble_of_pretrained_members_votes_with_the_files_weights(nets, tmp_path, digits):
    files = _member_files(tmp_path, 2)
    ensemble = defenses.get("ensemble").build(member_defense="pretrained", member_params={"factory": f"{nets}:mlp"},
                                              members=[{"weights": str(f)} for f in files])
    ensemble.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    ensemble.fit(digits, seed=0, progress=False)
    assert ensemble.members == ensemble.forward_passes == 2
    assert ensemble.surface_names() == ["deployed", "member:0", "member:1", "mean-gradient"]
    # loaded, not trained: each member holds exactly its file's tensors after fit
    for member, path in zip(ensemble.member_models(), files):
        expected = torch.load(path, weights_only=True)
        assert member.state_dict().keys() == expected.keys()
        assert all(torch.equal(member.state_dict()[k], v) for k, v in expected.items())
    # and votes by the mean softmax of the loaded networks
    x = digits.test_x[:20]
    with torch.no_grad():
        mean_softmax = torch.stack([_loaded_mlp(f)(x).softmax(1) for f in files]).mean(0)
        torch.testing.assert_close(ensemble.deployed()(x).exp(), mean_softmax, rtol=0, atol=1e-6)


def test_member_entries_lay_over_member_params(nets, tmp_path, digits):
    """``members`` as a list: each entry over the shared ``member_params``, for trained members too; a file all
    members share is pinned in ``member_params``, a member's own in its entry."""
    ensemble = defenses.get("ensemble").build(member_defense="adv-training", member_params={"rho": 0.5},
                                              members=[{"eps": 0.1}, {"eps": 0.3}])
    ensemble.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    assert [(m.eps, m.rho) for m in ensemble.member_defenses] == [(0.1, 0.5), (0.3, 0.5)]

    shared, own = _member_files(tmp_path, 2)
    entry = defenses.get("ensemble")
    params = entry.factory.resolve_params(entry.validate(
        {"member_defense": "pretrained", "member_params": {"factory": f"{nets}:mlp", "weights": str(shared)},
         "members": [{}, {"weights": str(own)}]}))
    sha = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in (shared, own)}
    assert params["member_params"]["weights_sha256"] == sha[shared]
    assert params["members"] == [{}, {"weights": str(own), "weights_sha256": sha[own]}]
    ensemble = entry.factory(**params)  # as the train task builds it
    ensemble.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    ensemble.fit(digits, seed=0, progress=False)
    for member, path in zip(ensemble.member_models(), (shared, own)):
        assert all(torch.equal(member.state_dict()[k], v) for k, v in torch.load(path, weights_only=True).items())
    # trained-member ensembles' parameters (and so their keys) are left as they were
    plain = entry.validate({"method": "bagging", "members": 3})
    assert entry.factory.resolve_params(plain) is plain and plain["members"] == 3


def test_a_changed_member_file_changes_the_ensembles_key(nets, tmp_path, write_suite, digits):
    files = _member_files(tmp_path, 2)
    suite = _suite(write_suite, f"""\
        - name: ensemble
          label: mine
          params:
            member_defense: pretrained
            member_params: {{factory: '{nets}:mlp'}}
            members: [{{weights: '{files[0]}'}}, {{weights: '{files[1]}'}}]
        """)
    store = tmp_path / "store"
    plan, first = _run(suite, store)  # loaded into the checkpoint, restored by the craft and score tasks
    members = plan.by_kind("train")[0].config["defense"]["params"]["members"]
    assert [m["weights_sha256"] for m in members] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert first.ran == len(plan.tasks)
    with torch.no_grad():  # the stored clean accuracy is the loaded members' mean-softmax vote's
        votes = torch.stack([_loaded_mlp(f)(digits.test_x).softmax(1) for f in files]).mean(0).argmax(1)
    clean = _rows(store).set_index("attack").loc["none", "clean_acc"]
    assert clean == pytest.approx((votes == digits.test_y).sum().item() / len(votes), abs=1e-12)

    os.utime(files[1], ns=(files[1].stat().st_atime_ns + 10**9, files[1].stat().st_mtime_ns + 10**9))  # touch
    plan_touched, touched = _run(suite, store)
    assert plan_touched.keys == plan.keys and touched.ran == 0

    torch.manual_seed(7)
    _save(_mlp().state_dict(), files[1])  # one member's file changes
    plan_changed, rerun = _run(suite, store)
    assert set(plan_changed.keys).isdisjoint(plan.keys) and rerun.ran == len(plan_changed.tasks)


def test_a_detector_with_a_pretrained_model_a_loads_it(nets, tmp_path, write_suite, digits):
    (weights,) = _member_files(tmp_path, 1)
    model_a = {"pretrained": {"factory": f"{nets}:mlp", "weights": str(weights)}}
    detector = defenses.get("bimodel-mismatch").build(model_a=model_a, model_b="monteiro-mlp", epochs=1)
    detector.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    b_before = {k: v.clone() for k, v in detector.models()[1].state_dict().items()}
    detector.fit(digits, seed=0, progress=False)
    a, b = detector.models()
    expected = torch.load(weights, weights_only=True)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in expected.items())  # loaded, not trained
    assert detector.deployed() is a
    assert not all(torch.equal(b.state_dict()[k], v) for k, v in b_before.items())  # model_b still trained
    assert detector.features(digits.test_x[:3]).shape == (3, 20)

    # through the harness: the detector track runs on it, its rows record the file's hash, and a changed file
    # is another detector (another train key)
    suite = write_suite(f"""\
        name: det
        device: cpu
        datasets: [{{name: digits, eval_size: 60}}]
        detector_attacks: [{{name: fgsm, budgets: [0.1, 0.3]}}]
        detectors:
          - name: bimodel-mismatch
            params: {{model_a: {json.dumps(model_a)}, model_b: monteiro-mlp, epochs: 1}}
            images: 40
            folds: 2
        """)
    plan, _ = _run(suite, tmp_path / "store")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert plan.by_kind("train")[0].config["defense"]["params"]["model_a"]["pretrained"]["weights_sha256"] == sha
    from bench import results

    rows = results(tmp_path / "store", table="detection")
    assert len(rows) > 0
    recorded = {json.loads(c)["params"]["model_a"]["pretrained"]["weights_sha256"] for c in rows["detector_config"]}
    assert recorded == {sha}
    torch.manual_seed(7)
    _save(_mlp().state_dict(), weights)
    assert build_plan(load_suite(suite)).by_kind("train")[0].key != plan.by_kind("train")[0].key


def test_bad_member_and_detector_model_params_are_one_line(nets, tmp_path, write_suite):
    (good,) = _member_files(tmp_path, 1)
    factory = f"factory: '{nets}:mlp'"
    ensemble_cases = [
        (f"member_params: {{{factory}}}, members: [{{weights: '{good}'}}, {{weights: '{tmp_path / 'absent.pt'}'}}]",
         r"members\[1\]: weights: .*absent\.pt: no such file"),
        (f"member_params: {{{factory}}}, members: [{{weight: '{good}'}}]",
         r"members\[0\]: weight: unknown key; did you mean 'weights'"),
        (f"member_params: {{{factory}, weights: '{good}', epochs: 3}}",
         r"pretrained members: epochs: unknown key"),
        (f"member_params: {{{factory}}}, members: [{{weights: '{good}'}}], method: bagging",
         r"method 'bagging' trains the members; pretrained members are loaded, not trained"),
        (f"member_params: {{{factory}}}, members: [{{weights: '{good}'}}], epochs: 3",
         r"epochs: training parameters; pretrained members are loaded, not trained"),
        (f"member_params: {{{factory}, factory_params: {{pixels: 784}}}}, members: 2",
         r"dataset 'digits': pretrained members: input shape: the network of factory .*mlp cannot take images of "
         r"shape \(1, 8, 8\)"),
        (f"member_params: {{{factory}}}, members: []", r"members must be >= 1"),
        ("member_defense: adv-training, member_params: {epss: 0.3}",
         r"adv-training members: epss: unknown key; did you mean 'eps'\?"),  # not 'epochs': the ensemble's
    ]
    for params, problem in ensemble_cases:
        member_defense = "" if "member_defense" in params else "member_defense: pretrained, "
        path = _suite(write_suite, f"- {{name: ensemble, params: {{{member_defense}{params}}}}}\n")
        with pytest.raises(UserError, match=rf"suite\.yaml: defenses\[0\]\.params: {problem}") as info:
            load_suite(path)
        assert "\n" not in str(info.value), params

    detector_cases = [
        (f"model_a: {{pretrained: {{{factory}, weights: '{tmp_path / 'absent.pt'}'}}}}",
         r"model_a\.pretrained: weights: .*absent\.pt: no such file"),
        (f"model_b: {{pretrained: {{{factory}, weights: '{good}', weight_key: x}}}}",
         r"model_b\.pretrained: weight_key: unknown key; did you mean 'weights_key'"),
        (f"model_a: {{{factory}}}", r"model_a: an architecture name, or \{pretrained: \{factory: \.\.\., weights: "
                                    r"\.\.\.\}\} for a model you already have"),
        ("model_a: no-such-arch", r"bimodel-mismatch model 'no-such-arch': unknown architecture 'no-such-arch'"),
    ]
    for params, problem in detector_cases:
        path = write_suite("name: det\ndevice: cpu\ndatasets: [{name: digits, eval_size: 60}]\n"
                           "detector_attacks: [{name: fgsm, budgets: [0.1]}]\n"
                           f"detectors:\n  - {{name: bimodel-mismatch, params: {{{params}}}, images: 40}}\n")
        with pytest.raises(UserError, match=rf"suite\.yaml: detectors\[0\]\.params: {problem}") as info:
            load_suite(path)
        assert "\n" not in str(info.value), params


def test_a_detectors_pretrained_model_checks_the_input_shape(nets):
    detector = defenses.get("bimodel-mismatch").build(
        model_a={"pretrained": {"factory": f"{nets}:mlp", "factory_params": {"pixels": 784}}}, model_b="monteiro-mlp")
    detector.check_input_shape((1, 28, 28))
    with pytest.raises(ValueError, match=r"^model_a\.pretrained: input shape: the network of factory .*mlp cannot "
                                         r"take images of shape \(1, 8, 8\)"):
        detector.check_input_shape((1, 8, 8))
