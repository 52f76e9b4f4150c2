"""Randomized defenses (RSE, Liu et al. 2018; random layer sampling, Lee et al. 2021), EOT and repeated
prediction."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from bench.attacks import get_attack
from bench.attacks.backends import attack_loss, eot_attack_loss
from bench.cli import main
from bench.config import load_suite
from bench.diversity import member_agreement
from bench.metrics import repeated_cell_metrics
from bench.plan import build_plan
from bench.registry import defenses
from bench.report import leaderboard_tables
from tests.conftest import trained_defense
from bench.runner.context import seeded_randomness
from bench.training import predict
from defenses.randomized import FIXED_DRAW_COUNTS, NoiseLayer, SampledLayer

CPU = torch.device("cpu")
# Loud noise, so that one draw's gradient is a poor guide (what EOT is for); ~83% clean on the 8x8 digits.
RSE = {"init_noise": 0.4, "inner_noise": 0.3, "ensemble_size": 8, "epochs": 5, "batch_size": 64}
RLS = {"sub_models": 2, "train_samples": 3, "test_samples": 8, "epochs": 6, "batch_size": 64, "lr": 3e-3}


trained = trained_defense


@pytest.fixture(scope="module")
def rse(digits):
    return trained(digits, "rse", **RSE)


@pytest.fixture(scope="module")
def rls(digits):
    return trained(digits, "random-layer-sampling", **RLS)


# ---- the defenses


def test_rse_puts_noise_before_every_convolution_and_on_the_input(digits):
    defense = defenses.get("rse").build(init_noise=0.2, inner_noise=0.1)
    defense.setup(digits.input_spec(), seed=0, device=CPU)
    convs = [m for m in defense.model.modules() if isinstance(m, nn.Conv2d)]
    noise = [m for m in defense.model.modules() if isinstance(m, NoiseLayer)]
    assert len(noise) == len(convs) == 2  # strauss-mnist: two convolutions
    assert defense.model[0] is noise[0] and noise[0].std == 0.2  # init noise on the [0, 1] input
    assert [n.std for n in noise[1:]] == [0.1]
    assert defense.stochastic and defense.forward_passes == 50  # the paper's 50-ensemble by default


def test_layer_sampling_holds_every_weighted_layer_of_m_sub_models(digits):
    defense = defenses.get("random-layer-sampling").build(sub_models=3)
    defense.setup(digits.input_spec(), seed=0, device=CPU)
    layers = [m for m in defense.model.modules() if isinstance(m, SampledLayer)]
    assert len(layers) == 4  # strauss-mnist: 2 convolutions, 2 linear layers
    for layer in layers:
        first, *others = layer.copies
        assert len(layer.copies) == 3
        assert all(not torch.equal(first.weight, o.weight) for o in others)  # each sub-model its own init
    assert defense.forward_passes == 10  # N = 10 sampled models per prediction (the paper's)


def test_rse_needs_a_convolution(digits):
    defense = defenses.get("rse").build(arch="monteiro-mlp")
    with pytest.raises(ValueError, match="no convolution"):
        defense.setup(digits.input_spec(), seed=0, device=CPU)


@pytest.mark.parametrize("which", ["rse", "rls"])
def test_predictions_are_random_in_eval_mode_and_fixed_draws_are_not(digits, request, which):
    defense = request.getfixturevalue(which)
    x = digits.test_x[:64]
    deployed = defense.deployed().eval()
    assert not deployed.training
    with torch.no_grad():
        a, b = deployed(x), deployed(x)
        assert not torch.allclose(a, b)  # randomness stays on although eval() was called
        for k in FIXED_DRAW_COUNTS:
            fixed = defense.surface(f"fixed:{k}")
            assert torch.equal(fixed(x), fixed(x))
        one, other = (defense.member_models()[i](x) for i in (0, 1))
        assert not torch.allclose(one, other)  # two fixed draws are two different sampled models


@pytest.mark.parametrize("which", ["rse", "rls"])
def test_randomized_defenses_are_accurate_and_diverse(digits, request, which):
    defense = request.getfixturevalue(which)
    with seeded_randomness(0, CPU):
        accuracy = (predict(defense.deployed(), digits.test_x, device=CPU) == digits.test_y).float().mean()
    assert accuracy > 0.8  # 8x8 digits, 3 epochs
    kappa = member_agreement(defense.member_models(), digits.test_x, digits.test_y, CPU)
    assert -1 <= kappa < 1  # the draws disagree on some examples


def test_seeded_training_and_prediction_repeat_exactly(digits, rse):
    again = trained(digits, "rse", **RSE)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in rse.state_dict().items())
    x = digits.test_x[:100]
    runs = []
    for _ in range(2):
        with seeded_randomness(123, CPU):
            runs.append(predict(rse.deployed(), x, device=CPU))
    assert torch.equal(*runs)


def test_layer_sampling_trains_on_the_mean_of_k_sampled_models(digits, rls):
    x, y = digits.train_x[:32], digits.train_y[:32]
    calls = []
    hook = rls.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        loss = rls.training_loss(rls.model, x, y)
    finally:
        hook.remove()
    assert calls == [3 * 32]  # K = 3 sampled models in one batched pass
    assert torch.isfinite(loss) and loss > 0


# ---- EOT


class RecordingNoise(NoiseLayer):
    """A noise layer that records the noise it drew, or replays a given noise tensor."""

    def __init__(self, std):
        super().__init__(std)
        self.drawn, self.replay = [], None

    def forward(self, x):
        noise = self.replay if self.replay is not None else torch.randn_like(x) * self.std
        self.drawn.append(noise)
        return x + noise


def test_eot_gradient_is_the_mean_of_single_draw_gradients():
    torch.manual_seed(0)
    noise = RecordingNoise(0.5)
    model = nn.Sequential(noise, nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y, k = torch.rand(6, 1, 8, 8, requires_grad=True), torch.arange(6) % 5, 7
    (eot_grad,) = torch.autograd.grad(eot_attack_loss(model, x, y, k), x)
    drawn = noise.drawn[-1]
    assert drawn.shape[0] == k * len(x)  # the k draws ran as one batch
    singles = []
    for j in range(k):
        noise.replay = drawn[j * len(x):(j + 1) * len(x)]
        (grad,) = torch.autograd.grad(attack_loss(model, x, y), x)
        singles.append(grad)
    torch.testing.assert_close(eot_grad, torch.stack(singles).mean(0), rtol=1e-5, atol=1e-7)


def test_eot_lowers_robust_accuracy_against_a_stochastic_defense(digits, rse):
    x, y = digits.test_x[:200], digits.test_y[:200]
    surface = rse.surface("single")  # one fresh draw per call

    def robust(eot):
        x_adv = get_attack("fgsm", {"eot": eot}).run(surface, x, y, 0.1, seed=0)
        with seeded_randomness(0, CPU):
            preds = np.stack([predict(rse.deployed(), x_adv, device=CPU).numpy() for _ in range(5)])
        return (preds == y.numpy()).mean()

    without, with_eot = robust(1), robust(20)  # measured: 0.538 and 0.496 (n = 200 x 5 repeats)
    assert with_eot < without - 0.02, (without, with_eot)


def test_eot_needs_the_torch_backend():
    assert get_attack("cw-l2", {"eot": 4}).backend == "torch"  # chosen when no backend is named
    assert get_attack("cw-l2", {}).backend == "foolbox"  # unchanged without EOT
    with pytest.raises(ValueError, match="set backend: torch"):
        get_attack("pgd-linf", {"eot": 4, "backend": "art"})
    with pytest.raises(ValueError, match="eot must be >= 1"):
        get_attack("fgsm", {"eot": 0})


def test_cw_with_eot_runs_on_a_stochastic_surface(digits, rse):
    x, y = digits.test_x[:20], digits.test_y[:20]
    x_adv = get_attack("cw-l2", {"eot": 3, "steps": 10, "binary_search_steps": 1}).run(
        rse.surface("single"), x, y, 1.0, seed=0)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all() and not torch.equal(x_adv, x)


# ---- repeated prediction


def test_strict_accuracy_is_never_above_the_mean_over_repeats():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    x = rng.random((400, 1, 2, 2)).astype(np.float32)
    for p_right in (0.2, 0.6, 0.95):
        preds = np.where(rng.random((10, 400)) < p_right, y, (y + 1) % 3)
        values, strict = repeated_cell_metrics(x, x, y, preds, preds)
        per_repeat = (preds == y).mean(axis=1)
        assert values["robust_acc"] == pytest.approx(per_repeat.mean())
        assert values["robust_acc_strict"] == pytest.approx(strict.mean())
        assert values["robust_acc_strict"] <= values["robust_acc"]
        assert values["robust_acc_spread"] == pytest.approx(per_repeat.std(ddof=1))
        assert values["repeats"] == 10 and values["n"] == 400
        assert values["robust_ci_low"] <= values["robust_acc"] <= values["robust_ci_high"]


# ---- the suite keys


RANDOMIZED_SUITE = """\
name: rand
device: cpu
repeats: 4
datasets:
  - {name: digits, eval_size: 40}
defenses:
  - {name: undefended, params: {epochs: 2}}
  - {name: rse, params: {ensemble_size: 4, epochs: 2}}
attacks:
  - {name: fgsm, budgets: [0.1]}
  - {name: pgd-linf, label: pgd-eot, surface: single, params: {steps: 3, eot: 3}, budgets: [0.1], defenses: [rse]}
  - {name: pgd-linf, label: pgd-1model, surface: "fixed:1", params: {steps: 3}, budgets: [0.1], defenses: [rse],
     evaluate_on: [deployed, "ensemble:1"]}
  - {name: pgd-linf, label: pgd-5models, surface: "fixed:5", params: {steps: 3}, budgets: [0.1], defenses: [rse]}
  - {name: cw-l2, label: cw-1model, surface: "fixed:1", params: {steps: 5, binary_search_steps: 1, backend: torch},
     budgets: [0.1, 1.0], defenses: [rse]}
"""


def test_plan_scores_only_stochastic_defenses_repeatedly(write_suite):
    plan = build_plan(load_suite(write_suite(RANDOMIZED_SUITE)))
    scores = plan.by_kind("score")
    repeats = {(t.info["defense"], t.info["attack"]): t.config.get("repeats") for t in scores}
    assert repeats[("undefended", None)] is None and repeats[("undefended", "fgsm")] is None
    assert repeats[("rse", None)] == 4 and repeats[("rse", "fgsm")] == 4 and repeats[("rse", "pgd-eot")] == 4
    crafts = {t.label: t.config["attack"]["params"] for t in plan.by_kind("craft")}
    assert any(p.get("eot") == 3 and p["backend"] == "torch" for p in crafts.values())
    assert all("eot" not in p for label, p in crafts.items() if "fgsm" in label)  # eot 1 stays out of keys


@pytest.mark.parametrize("change, message", [
    ("repeats: 4", "repeats: 0"),
    ("eot: 3}", "eot: 0}"),
    ("eot: 3}", "eot: 3, backend: foolbox}"),
    ('surface: single', 'surface: "fixed:7"'),
])
def test_bad_randomized_settings_are_one_line_errors(write_suite, capsys, change, message):
    path = write_suite(RANDOMIZED_SUITE.replace(change, message))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err
    assert ("repeats" in err) if "repeats" in message else ("attacks[1]" in err)


def test_a_randomized_suite_runs_and_reports_repeats(write_suite, tmp_path):
    store, board = tmp_path / "store", tmp_path / "board"
    assert main(["run", str(write_suite(RANDOMIZED_SUITE)), "--store", str(store), "--leaderboard", str(board),
                 "--quiet"]) == 0
    from bench.store import Store

    results = Store(store).results()
    rse_rows = results[results["defense"] == "rse"]
    assert (rse_rows["repeats"] == 4).all()
    assert (rse_rows["robust_acc_strict"] <= rse_rows["robust_acc"] + 1e-12).all()
    assert results[results["defense"] == "undefended"]["repeats"].isna().all()
    assert rse_rows.loc[rse_rows["evaluated_on"] == "deployed", "diversity_kappa"].notna().all()
    text = (board / "README.md").read_text()
    assert "Every repeat (%)" in text and "pgd-eot" in text
    tables = dict(leaderboard_tables(results))
    lee2 = tables["digits — randomized defenses: one sampled model attacked (the papers') beside EOT "
                  "(Lee et al. Table 2 layout)"].set_index("Attack")
    assert list(lee2.columns) == ["undefended: white-box", "rse: one sampled model", "rse: EOT k=3", "rse: deployed"]
    assert list(lee2.index) == ["No attack", "cw-l2 c=0.1", "cw-l2 c=1", "fgsm ε=0.1", "pgd-linf ε=0.1"]
    assert lee2.loc["fgsm ε=0.1", "rse: one sampled model"] == "—"  # fgsm ran on rse's deployed model only
    lee4 = tables["digits — k sampled models attacked together (Lee et al. Table 4 layout)"]
    assert list(lee4["Sampled models attacked"]) == [1, 5]
    samples = tables["digits — accuracy by test-time samples (Lee et al. Table 6, Liu et al. Fig. 5 layout)"]
    assert list(samples.columns) == ["Test-time samples", "rse: no attack", "rse: pgd-1model ε=0.1"]
    kappa = tables["digits — κ of the draws a prediction averages, lower is more diverse (Lee et al. Table 5 "
                   "layout); clean and on each attack's examples"].set_index("Defense")
    assert list(kappa.index) == ["rse"] and kappa.columns[0] == "clean"
    assert -1 <= float(kappa.loc["rse", "clean"]) < 1
    cw = tables["digits — C&W: accuracy (%) and median L2 of successful examples per constant c "
                "(Liu et al. Table 2 layout)"]
    assert list(cw.columns) == ["Defense", "Threat model", "cw-l2 c=0.1", "cw-l2 c=1"]
    assert list(cw.iloc[0, :2]) == ["rse", "one sampled model"]
    assert all(re.fullmatch(r"\d+\.\d \((\d.*|—)\)", cell) for cell in cw.iloc[0, 2:])  # "accuracy (median L2)"
