"""The dustbin defense (Abbasi et al. 2018) and rejection as an outcome: interpolation pairs, the mix,
Acc. + Rej. + Err. = 1, the NotMNIST loader, out-distribution sets, and a tiny suite end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import load_suite
from bench.data import (CIFAR100_SUPERCLASSES, CIFAR10_OVERLAP_SUPERCLASSES, DataContext, DatasetSplits, clear_cache,
                        excluded_labels, load_dataset, read_notmnist_folder, without_classes)
from bench.errors import UserError
from bench.metrics import OUT_DISTRIBUTION_ATTACK, cell_metrics, defended_mask, rejection_outcome
from bench.plan import build_plan
from bench.store import Store
from defenses.dustbin import RejectAwareSurface, interpolate, interpolation_pairs

from conftest import trained_defense

# --------------------------------------------------------------------------- interpolation


def test_interpolation_pairs_are_nearest_neighbours_from_another_class():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=60)
    source, neighbour = interpolation_pairs(features, labels, 0.5, seed=3)
    for c in range(4):  # half of each class (rounded), each source once
        mine = np.flatnonzero(labels == c)
        assert np.isin(source, mine).sum() == max(1, round(0.5 * len(mine)))
    assert len(set(source)) == len(source)
    assert (labels[source] != labels[neighbour]).all()
    for s, t in zip(source, neighbour):  # brute force: the closest image of any other class
        others = np.flatnonzero(labels != labels[s])
        distances = ((features[others] - features[s]) ** 2).sum(1)
        assert np.isclose(((features[t] - features[s]) ** 2).sum(), distances.min())
    again = interpolation_pairs(features, labels, 0.5, seed=3)
    assert (again[0] == source).all() and (again[1] == neighbour).all()  # seeded


def test_interpolate_mixes_exactly():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 1, 8, 8, generator=gen), torch.rand(4, 1, 8, 8, generator=gen)
    assert torch.equal(interpolate(a, b, 0.5), (a + b) / 2)
    assert torch.equal(interpolate(a, b, 1.0), a) and torch.equal(interpolate(a, b, 0.0), b)


# --------------------------------------------------------------------------- rejection as an outcome


def test_acc_rej_err_sum_to_one_and_the_convention():
    y = np.array([0, 1, 2, 3, 0, 1])
    pred = np.array([0, 4, 4, 1, 0, 2])  # 4 = the reject label of a 4-class model
    out = rejection_outcome(pred, y, reject_class=4)
    assert (out["acc_rate"], out["reject_rate"], out["error_rate"]) == (2 / 6, 2 / 6, 2 / 6)
    assert out["acc_rate_ci_low"] < out["acc_rate"] < out["acc_rate_ci_high"]
    no_reject = rejection_outcome(pred, y)
    assert no_reject["reject_rate"] is None and no_reject["error_rate"] == pytest.approx(4 / 6)
    # attacked: a rejection is defended; clean: a rejection is an error
    assert defended_mask(pred, y, 4).tolist() == [True, True, True, False, True, False]
    assert defended_mask(pred, y, 4, attacked=False).tolist() == [True, False, False, False, True, False]
    x = np.zeros((6, 1, 2, 2))
    attacked = cell_metrics(x, x + 0.1, y, y, pred, reject_class=4)
    clean = cell_metrics(x, x, y, pred, pred, reject_class=4, attacked=False)
    assert attacked.robust_acc == pytest.approx(4 / 6) and clean.robust_acc == pytest.approx(2 / 6)
    assert attacked.attack_success_rate == pytest.approx(2 / 6)
    for m in (attacked, clean):
        assert m.acc_rate + m.reject_rate + m.error_rate == pytest.approx(1)
    # out-distribution images (y = -1): only a rejection is right
    ood = rejection_outcome(np.array([4, 4, 0]), np.full(3, -1), reject_class=4)
    assert (ood["acc_rate"], ood["reject_rate"], ood["error_rate"]) == (0, 2 / 3, 1 / 3)


# --------------------------------------------------------------------------- data


def test_notmnist_loader_reads_png_folders(tmp_path):
    from PIL import Image

    root = tmp_path / "notMNIST_small"
    rng = np.random.default_rng(0)
    for letter in "ABCDEFGHIJ":
        (root / letter).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(root / letter / f"f{i}.png")
    (root / "A" / "empty.png").write_bytes(b"")  # notMNIST_small ships two such files
    images, labels, skipped = read_notmnist_folder(root)
    assert images.shape == (30, 28, 28) and skipped == 1
    assert labels.tolist() == [i for i in range(10) for _ in range(3)]
    first = np.asarray(Image.open(root / "A" / "f0.png"))
    assert (images[0] == first).all()
    data = load_dataset("notmnist", {"test_fraction": 0.5}, DataContext(tmp_path))
    assert data.train_x.shape[1:] == (1, 28, 28) and len(data.train_y) + len(data.test_y) == 30
    assert data.class_names == list("ABCDEFGHIJ") and 0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1
    (root / "B" / "wide.png").unlink(missing_ok=True)
    Image.fromarray(np.zeros((28, 30), dtype=np.uint8), mode="L").save(root / "B" / "wide.png")
    with pytest.raises(UserError, match="wide.png: a 30x28 image"):
        read_notmnist_folder(root)
    clear_cache()
    with pytest.raises(UserError, match="elsewhere/notMNIST_small with one folder of PNGs per letter"):
        load_dataset("notmnist", {}, DataContext(tmp_path / "elsewhere"))
    (root / "J").rename(tmp_path / "J")
    with pytest.raises(UserError, match="lacks the folder J of PNGs"):
        read_notmnist_folder(root)


def test_out_distribution_without_cifar10_superclasses():
    fine = sorted(n for members in CIFAR100_SUPERCLASSES.values() for n in members)  # torchvision's order
    assert len(set(fine)) == 100 and len(CIFAR100_SUPERCLASSES) == 20
    dropped = excluded_labels(fine, CIFAR10_OVERLAP_SUPERCLASSES, "cifar100")
    assert len(dropped) == 25 and fine.index("tiger") in dropped and fine.index("apple") not in dropped
    y = torch.arange(100).repeat(2)
    x = torch.zeros(200, 3, 2, 2)
    data = without_classes(DatasetSplits(x, y, x, y, 100, fine), CIFAR10_OVERLAP_SUPERCLASSES, "cifar100")
    assert len(data.train_y) == 150 and not set(data.test_y.tolist()) & set(dropped)
    with pytest.raises(UserError, match="no class 'vehicles'"):
        excluded_labels(fine, ["vehicles"], "cifar100")


# --------------------------------------------------------------------------- the defense


@pytest.fixture(scope="module")
def dustbin(digits):
    # Out-distribution stand-in on the 8x8 digits: the digits 5-9 (the mechanics, not the paper's data).
    return trained_defense(digits, "dustbin", arch="abbasi-mnist", epochs=2, feature_epochs=1, batch_size=64,
                           out_distribution="digits",
                           out_exclude_classes=["0", "1", "2", "3", "4"], out_fraction=0.2)


def test_dustbin_training_set_and_outputs(dustbin, digits):
    n = len(digits.train_y)
    per_class = sum(max(1, round(0.3 * int((digits.train_y == c).sum()))) for c in range(10))
    assert dustbin.dustbin_counts == {"out_distribution": round(0.2 * n), "interpolated": per_class}
    assert dustbin.has_reject_class and dustbin.reject_class == 10 and dustbin.spec.num_classes == 10
    with torch.no_grad():
        assert dustbin.deployed()(digits.test_x[:5]).shape == (5, 11)
    assert dustbin.as_art().nb_classes == 11


def test_features_from_reads_the_given_model_instead_of_training_one(digits, monkeypatch):
    import defenses.dustbin as dustbin_module
    from bench.registry import defenses
    from defenses.dustbin import penultimate_features

    naive = trained_defense(digits, "undefended", arch="abbasi-mnist", epochs=1, batch_size=64)
    defense = defenses.get("dustbin").build(arch="abbasi-mnist", epochs=1, batch_size=64, out_distribution="digits",
                                            out_exclude_classes=["0", "1", "2", "3", "4"], features_from="naive")
    defense.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    defense.references = {"features_from": naive}
    trained: list[int] = []
    train = dustbin_module.train_classifier
    monkeypatch.setattr(dustbin_module, "train_classifier",
                        lambda model, x, *a, **kw: trained.append(len(x)) or train(model, x, *a, **kw))
    features = defense.naive_features(digits, seed=0, progress=False)
    assert torch.equal(features, penultimate_features(naive.model, digits.train_x)) and trained == []
    defense.fit(digits, seed=0, progress=False)
    assert len(trained) == 1  # the dustbin CNN itself; no second naive CNN
    with pytest.raises(ValueError, match="feature_epochs trains the naive CNN inside fit"):
        defenses.get("dustbin").build(features_from="naive", feature_epochs=2)


def test_features_from_makes_the_naive_model_an_input_and_is_checked(write_suite):
    plan = build_plan(load_suite(write_suite(TINY_DUSTBIN_SUITE)))
    trains = {t.info["defense"]: t for t in plan.by_kind("train")}
    assert trains["dustbin"].deps == [trains["naive"].key]
    assert trains["dustbin"].config["references"] == {"features_from": trains["naive"].key}
    assert trains["dustbin-no-intrpl"].deps == [] and "references" not in trains["dustbin-no-intrpl"].config
    for wrong, message in (("naiv", r"unknown defense label 'naiv'.*did you mean 'naive'"),
                           ("dustbin", "'dustbin' is this defense itself")):
        with pytest.raises(UserError, match=r"defenses\[3\].params.features_from: " + message):
            load_suite(write_suite(TINY_DUSTBIN_SUITE.replace("features_from: naive", f"features_from: {wrong}")))


def test_reject_aware_surface_counts_only_wrong_non_dustbin_classes():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    surface = RejectAwareSurface(Fixed(), num_classes=3)
    logits = torch.tensor([[5.0, 1.0, 0.0, 2.0],   # correct
                           [1.0, 0.0, 0.0, 5.0],   # rejected
                           [1.0, 4.0, 0.0, 2.0]])  # wrong and not rejected: the only success
    y = torch.tensor([0, 0, 0])
    merged = surface.attack_logits(logits, y)
    assert (merged.argmax(1) != y).tolist() == [False, False, True]
    assert merged[1, 0] == 5.0  # the true column carries the dustbin's logit
    loss = surface.attack_loss(logits[2:], y[2:])
    assert loss.item() == pytest.approx(4.0 - 2.0)


def test_cw_targets_and_an_independent_surrogate_init():
    from bench.attacks import get_attack
    from bench.models import InputSpec, build_architecture

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    x = torch.tensor([[0.9, 0.5, 0.1, 0.7], [0.2, 0.3, 0.8, 0.0]]).reshape(2, 1, 1, 4)
    y = torch.tensor([0, 2])
    most = get_attack("cw-l2-targeted", {"target": "most-likely"}).make_targets(Fixed(), x, y, seed=0)
    least = get_attack("cw-l2-targeted", {"target": "least-likely"}).make_targets(Fixed(), x, y, seed=0)
    assert most.tolist() == [3, 1] and least.tolist() == [2, 3]  # never the true class
    spec = InputSpec(1, 8, 8, 10)
    torch.manual_seed(0)
    a = build_architecture("abbasi-mnist", spec)
    torch.manual_seed(0)
    b = build_architecture("abbasi-mnist", spec, {"init_seed": 1})
    torch.manual_seed(7)
    c = build_architecture("abbasi-mnist", spec, {"init_seed": 1})
    assert not torch.equal(a[0][0].weight, b[0][0].weight) and torch.equal(b[0][0].weight, c[0][0].weight)


def test_unknown_out_distribution_fails_at_validation(write_suite):
    with pytest.raises(UserError, match=r"defenses\[0\].params: unknown dataset 'notmnst'"):
        load_suite(write_suite("""\
            name: x
            datasets: [{name: digits}]
            defenses: [{name: dustbin, params: {out_distribution: notmnst}}]
            """))
    with pytest.raises(UserError, match=r"defenses\[0\].params: dataset 'digits': out_distribution 'fashion-mnist' "
                                        r"has 1x28x28 images, this dataset 1x8x8"):
        load_suite(write_suite("""\
            name: x
            datasets: [{name: digits}]
            defenses: [{name: dustbin}]
            """))
    with pytest.raises(UserError, match=r"datasets\[0\].out_distribution.name: 'fashion-mnist' has 1x28x28 images"):
        load_suite(write_suite("""\
            name: x
            datasets: [{name: digits, out_distribution: {name: fashion-mnist}}]
            defenses: [{name: undefended}]
            """))


# --------------------------------------------------------------------------- a tiny suite end to end

TINY_DUSTBIN_SUITE = """\
name: tiny-dustbin
device: cpu
checks: false
datasets:
  - name: digits
    train_size: 600
    eval_size: 60
    eval_correct_by: surrogate   # the paper's protocol: attack the test images the surrogate gets right
    out_distribution: {name: digits, exclude_classes: ["0", "1", "2", "3", "4"], test_size: 50}
defenses:
  - name: undefended
    label: naive
    params: {arch: abbasi-mnist, epochs: 2, batch_size: 64}
  - name: undefended
    label: surrogate
    params: {arch: abbasi-mnist, arch_params: {init_seed: 1}, epochs: 3, batch_size: 64}
  - name: dustbin
    label: dustbin-no-intrpl
    params: &dustbin {arch: abbasi-mnist, epochs: 3, batch_size: 64, out_distribution: digits,
                      out_exclude_classes: ["0", "1", "2", "3", "4"], interpolate: false}
  - name: dustbin
    params: {<<: *dustbin, interpolate: true, features_from: naive}   # pairs from the naive CNN's features
attacks:
  - name: fgsm
    transfer_from: surrogate
    budgets: [0.2]
  - name: cw-l2-targeted
    label: cw-l2-ll
    transfer_from: surrogate
    eval_size: 20                # C&W on fewer images (the paper: 100 x {least, most likely})
    params: {backend: torch, confidence: 2.0, steps: 10, binary_search_steps: 1, target: least-likely}
    budgets: [1.0]
  - name: pgd-linf
    label: pgd-reject-aware
    surface: reject-aware
    params: {backend: torch, steps: 5}
    defenses: [dustbin]
    budgets: [0.2]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("dustbin")
    suite = root / "suite.yaml"
    suite.write_text(TINY_DUSTBIN_SUITE)
    code = main(["run", str(suite), "--store", str(root / "s"), "--leaderboard", str(root / "lb"), "--quiet"])
    return root, code


def test_plan_scores_the_out_distribution_set_on_every_defense(write_suite):
    plan = build_plan(load_suite(write_suite(TINY_DUSTBIN_SUITE)))
    out = [t for t in plan.by_kind("score") if t.config.get("examples") == "out-distribution"]
    assert sorted(t.info["defense"] for t in out) == ["dustbin", "dustbin-no-intrpl", "naive", "surrogate"]
    assert out[0].config["out_distribution"]["exclude_classes"] == ["0", "1", "2", "3", "4"]


def test_suite_rows_outcomes_and_table_one(finished):
    root, code = finished
    assert code == 0
    store = Store(root / "s")
    rows = store.results()
    store.close()
    # the suite's own cells (other tasks, e.g. soundness checks, may add rows of their own)
    rows = rows[rows["source"].isin(["", "white-box"]) | rows["source"].str.startswith("transfer:")]
    # Acc. + Rej. + Err. = 1 in every cell; Rej. only for the reject-capable models
    total = rows["acc_rate"] + rows["reject_rate"].fillna(0) + rows["error_rate"]
    assert np.allclose(total, 1)
    dustbins = rows["defense"].str.startswith("dustbin")
    assert rows.loc[dustbins, "reject_rate"].notna().all() and rows.loc[~dustbins, "reject_rate"].isna().all()
    # robust accuracy of a reject option: an attacked rejection is defended, a clean one an error
    attacked = dustbins & ~rows["attack"].isin(["none"])
    assert np.allclose(rows.loc[attacked, "robust_acc"],
                       rows.loc[attacked, "acc_rate"] + rows.loc[attacked, "reject_rate"])
    clean = dustbins & (rows["attack"] == "none")
    assert np.allclose(rows.loc[clean, "robust_acc"], rows.loc[clean, "acc_rate"])
    transfer = rows[rows["source"] == "transfer:surrogate"]
    assert {"fgsm", "cw-l2-ll"} <= set(transfer["attack"]) and {"naive", "dustbin"} <= set(transfer["defense"])
    adaptive = rows[(rows["surface"] == "reject-aware") & (rows["source"] == "white-box")]
    assert list(adaptive["defense"]) == ["dustbin"] and adaptive["n"].iloc[0] == 60
    ood = rows[rows["attack"] == OUT_DISTRIBUTION_ATTACK]
    assert len(ood) == 4 and (ood["n"] == 50).all() and (ood["acc_rate"] == 0).all()
    board = (root / "lb" / "README.md").read_text()
    # The view names its in- and out-distribution data sets, as the paper's "<MNIST, NotMNIST>" header does.
    assert "naive vs augmented CNNs on &lt;digits, " in board and "(Abbasi et al. Table I layout" in board
    assert "| In-dist. test (digits)" in board
    assert "a rejected clean in-distribution example counts as an error" in board
    table = board.split("Abbasi et al. Table I layout")[1]
    for label in ("Out-dist. test", "fgsm ε=0.2 (from surrogate)", "pgd-reject-aware ε=0.2 (white-box, reject-aware)",
                  "Average Err., transfer attacks"):
        assert label in table


def test_attacks_use_the_images_the_surrogate_gets_right_and_cw_the_first_of_them(finished, write_suite):
    from bench.runner.context import trained_defense
    from bench.runner import RunContext
    from bench.training import predict

    root, code = finished
    assert code == 0
    plan = build_plan(load_suite(write_suite(TINY_DUSTBIN_SUITE)))
    surrogate = next(t for t in plan.by_kind("train") if t.info["defense"] == "surrogate")
    crafts = plan.by_kind("craft")
    assert all(surrogate.key in t.deps for t in crafts)  # its model decides which images every attack gets
    store = Store(root / "s")
    ctx = RunContext(store_dir=root / "s", data=DataContext("data"), device="cpu", batch_size=250, progress=False)
    model, data = trained_defense(surrogate, ctx)
    indices = {t.info["attack"]: store.load_artifact(t.key)["indices"] for t in crafts}
    rows = store.results()
    store.close()
    right = predict(model.surface("deployed"), data.test_x, device="cpu", batch_size=250) == data.test_y
    assert len(indices["fgsm"]) == 60 and bool(right[indices["fgsm"]].all())
    assert torch.equal(indices["fgsm"], indices["pgd-reject-aware"])  # every attack: the same images...
    # ... and C&W the first 20 of them in the seeded order (a prefix, not another sample)
    order = torch.randperm(len(data.test_y), generator=torch.Generator().manual_seed(0))
    order = order[right[order]]
    assert torch.equal(indices["fgsm"], order[:60].sort().values)
    assert torch.equal(indices["cw-l2-ll"], order[:20].sort().values)
    # Rows say which images they attacked, so a worst case never pairs flags of different images.
    digests = rows.groupby("attack")["examples"].agg(set)
    assert digests["fgsm"] == digests["pgd-reject-aware"] and len(digests["fgsm"]) == 1
    assert digests["cw-l2-ll"].isdisjoint(digests["fgsm"])


def test_eval_correct_by_and_an_attack_eval_size_are_checked_and_keep_other_suites_keys(write_suite):
    with pytest.raises(UserError, match=r"datasets\[0\].eval_correct_by: unknown defense label 'surogate'.*"
                                        r"did you mean 'surrogate'"):
        load_suite(write_suite(TINY_DUSTBIN_SUITE.replace("eval_correct_by: surrogate", "eval_correct_by: surogate")))
    with pytest.raises(UserError, match=r"attacks\[1\].eval_size: 200 examples, more than dataset 'digits' "
                                        r"attacks \(its eval_size: 60\)"):
        load_suite(write_suite(TINY_DUSTBIN_SUITE.replace("eval_size: 20 ", "eval_size: 200 ")))
    # The soundness checks attack the same images (fewer of them), so they compare like with like.
    checked = build_plan(load_suite(write_suite(TINY_DUSTBIN_SUITE.replace("checks: false", "checks: true"))))
    surrogate = next(t for t in checked.by_kind("train") if t.info["defense"] == "surrogate")
    evidence = [t for t in checked.tasks if t.label.startswith("check:")]
    assert {t.kind for t in evidence} == {"craft", "score", "check-noise", "probe"}
    assert all(t.config["eval"]["correct_by"] == surrogate.key and surrogate.key in t.deps
               for t in evidence if t.kind != "score")
    plain = TINY_DUSTBIN_SUITE.replace("    eval_correct_by: surrogate", "    # none").replace(
        "    eval_size: 20 ", "    # none ")
    crafts = build_plan(load_suite(write_suite(plain))).by_kind("craft")
    assert all(len(t.deps) == 1 and set(t.config["eval"]) == {"dataset", "eval_size"} for t in crafts)


def test_table_one_view_pools_seeds_by_counts():
    from bench.report.dustbin_views import rejection_view

    base = {"dataset": "d", "attack": "fgsm", "surface": "deployed", "source": "transfer:s", "budget_param": "eps",
            "budget": 0.2, "evaluated_on": "deployed", "created_at": "2026-01-01T00:00:00+00:00"}
    rows = pd.DataFrame([
        {**base, "defense": "db", "seed": 0, "n": 10, "acc_rate": 0.5, "reject_rate": 0.5, "error_rate": 0.0},
        {**base, "defense": "db", "seed": 1, "n": 30, "acc_rate": 0.0, "reject_rate": 0.5, "error_rate": 0.5},
        {**base, "defense": "naive", "seed": 0, "n": 10, "acc_rate": 0.3, "reject_rate": None, "error_rate": 0.7},
        {**base, "attack": "none", "source": "", "budget": None, "budget_param": "", "defense": "db", "seed": 0,
         "n": 40, "acc_rate": 0.9, "reject_rate": 0.05, "error_rate": 0.05},
    ])
    view = rejection_view(rows)
    assert list(view.columns) == ["naive", "db"]  # the naive model first, as in Table I
    label = "fgsm ε=0.2 (from s)"
    assert view.loc[(label, "Acc."), "db"].startswith("12.5 [")  # 5 of 40
    assert view.loc[(label, "Err."), "db"].startswith("37.5 [")  # 15 of 40
    assert view.loc[(label, "Rej."), "naive"] == "—" and view.loc[(label, "n"), "db"] == "40"
    assert view.loc[("In-dist. test (d)", "Acc."), "db"].startswith("90.0 [")  # named by its data set
