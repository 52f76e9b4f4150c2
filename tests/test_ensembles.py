"""Strauss et al. 2017: ensembles (four methods, Grad. 1/Grad. 2 surfaces), adversarial training,
defensive distillation, and the interrater agreement κ (Kuncheva & Whitaker 2003)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks import get_attack
from bench.cli import main
from bench.diversity import interrater_agreement, member_agreement
from bench.registry import defenses
from tests.conftest import trained_defense
from defenses.adversarial_training import AdversarialTraining
from defenses.ensemble import Ensemble, MeanGradient, MeanSoftmax
from defenses.gaussian_augment import GaussianAugment

CPU = torch.device("cpu")
FAST = {"epochs": 2, "batch_size": 64}


trained = trained_defense


@pytest.fixture(scope="module")
def ensembles(digits):
    return {method: trained(digits, "ensemble", method=method, members=3, **FAST)
            for method in ("random-init", "mixed-arch", "bagging", "gauss-noise")}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- interrater agreement


def test_interrater_agreement_matches_a_hand_computed_example():
    correct = np.array([[1, 1, 0, 1],
                        [1, 0, 0, 1],
                        [1, 1, 1, 0]], dtype=bool)
    # L = 3 members, N = 4 examples; members correct per example l(z_j) = 3, 2, 1, 2.
    # (1/L) Σ_j l(z_j)(L − l(z_j)) = (3·0 + 2·1 + 1·2 + 2·1) / 3 = 6/3 = 2
    # p̄ = 8 correct / 12 = 2/3;  N (L − 1) p̄ (1 − p̄) = 4 · 2 · 2/3 · 1/3 = 16/9
    # κ = 1 − 2 / (16/9) = 1 − 18/16 = −1/8
    assert interrater_agreement(correct) == pytest.approx(-0.125)
    # Two members always disagreeing: l(z_j) = 1; (1/2)(1 + 1) = 1; 2 · 1 · 1/4 = 1/2; κ = 1 − 2 = −1.
    assert interrater_agreement(np.array([[1, 0], [0, 1]])) == pytest.approx(-1.0)


def test_interrater_agreement_degenerate_cases():
    assert interrater_agreement(np.array([[1, 0, 1], [1, 0, 1]])) == pytest.approx(1.0)  # identical members
    assert interrater_agreement(np.ones((3, 5), dtype=bool)) == 1.0  # p̄ = 1: complete agreement
    assert interrater_agreement(np.zeros((3, 5), dtype=bool)) == 1.0  # p̄ = 0
    with pytest.raises(ValueError, match="at least 2 members"):
        interrater_agreement(np.ones((1, 5), dtype=bool))
    with pytest.raises(ValueError, match="shaped"):
        interrater_agreement(np.ones(5, dtype=bool))


def test_member_agreement_scores_the_members_predictions(digits, ensembles):
    models = ensembles["bagging"].member_models()
    x, y = digits.test_x, digits.test_y
    with torch.no_grad():
        correct = np.stack([(m(x).argmax(1) == y).numpy() for m in models])
    kappa = member_agreement(models, x, y, CPU, batch_size=100)
    assert kappa == pytest.approx(interrater_agreement(correct))
    assert -1 <= kappa < 1  # the members make some different errors


# ---- ensembles


@pytest.mark.parametrize("method", ["random-init", "mixed-arch", "bagging", "gauss-noise"])
def test_ensemble_predicts_the_label_of_the_highest_mean_member_probability(digits, ensembles, method):
    ensemble = ensembles[method]
    x, y = digits.test_x, digits.test_y
    with torch.no_grad():
        mean_probs = torch.stack([F.softmax(m(x), dim=1) for m in ensemble.member_models()]).mean(0)
        scores = ensemble.deployed()(x)
    assert torch.allclose(scores.exp(), mean_probs, atol=1e-6)
    assert torch.equal(scores.argmax(1), mean_probs.argmax(1))
    assert (scores.argmax(1) == y).float().mean() > 0.6
    assert ensemble.forward_passes == 3


def test_random_init_and_gauss_noise_members_have_different_weights(ensembles):
    for method in ("random-init", "gauss-noise"):
        first = [next(m.parameters()) for m in ensembles[method].member_models()]
        assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    members = ensembles["gauss-noise"].member_defenses
    assert all(isinstance(m, GaussianAugment) and m.std == 0.1 for m in members)


def test_mixed_arch_members_have_different_architectures(ensembles):
    counts = [n_params(m) for m in ensembles["mixed-arch"].member_models()]
    assert len(set(counts)) == 3, counts
    variants = [m.arch_params for m in ensembles["mixed-arch"].member_defenses]
    assert variants == [{"extra_filters": 0, "extra_conv": False}, {"extra_filters": 0, "extra_conv": True},
                        {"extra_filters": 4, "extra_conv": False}]


def test_bagging_members_train_on_different_bootstrap_replicates(digits, ensembles):
    indices = ensembles["bagging"].bootstrap_indices
    m = len(digits.train_y)
    assert len(indices) == 3 and all(len(idx) == m for idx in indices)
    assert not torch.equal(indices[0], indices[1]) and not torch.equal(indices[1], indices[2])
    for idx in indices:  # about 1 − 1/e ≈ 63.2% distinct rows per replicate (Strauss Sec. 3)
        assert 0.58 < len(idx.unique()) / m < 0.68


def test_mean_gradient_surface_is_the_average_member_gradient(digits, ensembles):
    ensemble = ensembles["random-init"]
    x, y = digits.test_x[:16], digits.test_y[:16]
    surface = ensemble.surface("mean-gradient")

    x_var = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(surface.attack_loss(x_var, y), x_var)
    member_grads = []
    for model in ensemble.member_models():
        x_var = x.clone().requires_grad_(True)
        member_grads.append(torch.autograd.grad(F.cross_entropy(model(x_var), y, reduction="sum"), x_var)[0])
    assert torch.allclose(grad, torch.stack(member_grads).mean(0), atol=1e-5)
    with torch.no_grad():
        assert torch.equal(surface(x), ensemble.deployed()(x))  # its scores are the deployed ensemble's


def test_surfaces_are_listed_before_training_and_checkpoints_round_trip(digits, ensembles, tmp_path):
    untrained = defenses.get("ensemble").build(members=3)
    assert untrained.surface_names() == ["deployed", "member:0", "member:1", "member:2", "mean-gradient"]
    ensemble = ensembles["random-init"]
    assert sorted(ensemble.surfaces()) == sorted(untrained.surface_names())
    x = digits.test_x[:32]
    with torch.no_grad():
        assert torch.equal(ensemble.surface("member:1")(x), ensemble.member_models()[1](x))  # Grad. 1

    torch.save(ensemble.state_dict(), tmp_path / "ckpt.pt")
    assert {k.split(".")[0] for k in ensemble.state_dict()} == {"member0", "member1", "member2"}
    restored = defenses.get("ensemble").build(members=3, **FAST)
    restored.setup(digits.input_spec(), seed=123, device=CPU)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(restored.deployed()(x), ensemble.deployed()(x))


# ---- batched members (one vmap call instead of a loop)


def input_gradients(surface, x, y):
    """Input gradients of the mean-gradient attack loss and of the deployed scores' cross-entropy."""
    grads = []
    for loss in (lambda x_var: surface.attack_loss(x_var, y), lambda x_var: F.cross_entropy(surface(x_var), y)):
        x_var = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(loss(x_var), x_var)[0])
    return grads


def assert_batched_matches_loop(batched, loop, x, y):
    assert batched.batched and not loop.batched
    with torch.no_grad():
        assert batched.member_logits(x).shape == (len(loop.members), len(x), 10)
        assert torch.allclose(batched.member_logits(x), loop.member_logits(x), atol=1e-5)
        assert torch.allclose(batched(x), loop(x), atol=1e-5)
    assert torch.allclose(batched.attack_loss(x, y), loop.attack_loss(x, y), rtol=1e-5)
    for g_batched, g_loop in zip(input_gradients(batched, x, y), input_gradients(loop, x, y)):
        assert torch.allclose(g_batched, g_loop, atol=1e-5)


@pytest.mark.parametrize("method", ["random-init", "bagging", "gauss-noise"])
def test_batched_members_match_the_loop(digits, ensembles, method):
    models = ensembles[method].member_models()
    x, y = digits.test_x[:32], digits.test_y[:32]
    assert_batched_matches_loop(MeanGradient(models, batched=True), MeanGradient(models), x, y)


def test_batched_members_need_one_architecture_and_eval_mode(digits, ensembles):
    x = digits.test_x[:8]
    mixed = MeanSoftmax(ensembles["mixed-arch"].member_models(), batched=True)
    assert not mixed.batched  # different architectures: the loop
    with torch.no_grad():
        assert torch.equal(mixed(x), ensembles["mixed-arch"].deployed()(x))

    models = ensembles["random-init"].member_models()
    batched, loop = MeanSoftmax(models, batched=True), MeanSoftmax(models)
    try:  # training mode: dropout needs each member's own randomness, so the loop runs
        batched.train()
        outputs = []
        for module in (batched, loop):
            torch.manual_seed(0)
            with torch.no_grad():
                outputs.append(module(x))
        assert torch.equal(*outputs)
    finally:
        batched.eval()
    with torch.no_grad():
        batched(x)
    assert batched.state_dict().keys() == loop.state_dict().keys()  # the stacked-call skeleton is no submodule


def test_ensemble_batched_members_switch(digits, ensembles, monkeypatch):
    ensemble = ensembles["random-init"]
    assert not Ensemble.batched_members  # the default: slower than the loop on CPU (bench ensembles)
    assert not ensemble.deployed().batched and not ensemble.surface("mean-gradient").batched
    loop_scores = ensemble.deployed()(digits.test_x[:16]).detach()
    monkeypatch.setattr(ensemble, "batched_members", True)
    assert ensemble.deployed().batched and ensemble.surface("mean-gradient").batched
    assert torch.allclose(ensemble.deployed()(digits.test_x[:16]), loop_scores, atol=1e-5)


def test_batched_members_follow_a_checkpoint_round_trip(digits, ensembles, tmp_path):
    ensemble = ensembles["bagging"]
    x, y = digits.test_x[:32], digits.test_y[:32]
    torch.save(ensemble.state_dict(), tmp_path / "ckpt.pt")
    restored = defenses.get("ensemble").build(method="bagging", members=3, **FAST)
    restored.setup(digits.input_spec(), seed=123, device=CPU)
    restored.batched_members = True
    built_before = restored.surface("mean-gradient")  # used before the restore: must not keep stale weights
    with torch.no_grad():
        before = built_before(x)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    reference = MeanGradient(ensemble.member_models())
    with torch.no_grad():
        assert not torch.allclose(before, reference(x), atol=1e-3)
    assert_batched_matches_loop(built_before, reference, x, y)
    assert_batched_matches_loop(restored.surface("mean-gradient"), reference, x, y)
    assert restored.state_dict().keys() == ensemble.state_dict().keys()


def test_ensemble_of_adversarially_trained_members(digits):
    ensemble = trained(digits, "ensemble", method="bagging", members=2, member_defense="adv-training",
                       member_params={"eps": 0.2}, **FAST)
    assert all(isinstance(m, AdversarialTraining) and m.eps == 0.2 for m in ensemble.member_defenses)
    with torch.no_grad():
        assert (ensemble.deployed()(digits.test_x).argmax(1) == digits.test_y).float().mean() > 0.5


def test_ensemble_rejects_inconsistent_parameters():
    with pytest.raises(ValueError, match="set epochs on the ensemble"):
        Ensemble(member_params={"epochs": 3})
    with pytest.raises(ValueError, match="gauss-noise trains 'gaussian-augment' members"):
        Ensemble(method="gauss-noise", member_defense="adv-training")
    with pytest.raises(ValueError, match="std = noise_std"):
        Ensemble(method="gauss-noise", member_params={"std": 0.5})
    with pytest.raises(ValueError, match="mixed-arch"):
        Ensemble(method="mixed-arch", arch="vgg16")
    with pytest.raises(ValueError, match="(?s)adv-training members.*epss"):
        Ensemble(member_defense="adv-training", member_params={"epss": 0.3})
    with pytest.raises(ValueError, match="members must be >= 1"):
        Ensemble(members=0)


def test_cli_lists_the_ensemble_and_its_methods(capsys):
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    assert "ensemble" in out and "adv-training" in out and "distillation" in out
    assert "method: Literal['random-init', 'mixed-arch', 'bagging', 'gauss-noise']" in out


# ---- adversarial training


def test_adversarial_training_loss_is_the_fgsm_mixture():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    defense = AdversarialTraining(eps=0.1, rho=0.3)
    # Linear logits z = W x + b: ∂ mean CE / ∂x = (softmax(z) − onehot(y)) W / batch, so the
    # FGSM step's sign is that of (softmax(z) − onehot(y)) W.
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    flat = x.flatten(1)
    probs = F.softmax(flat @ weight.T + bias, dim=1)
    direction = ((probs - F.one_hot(y, 10)) @ weight).sign().view_as(x)
    x_fgsm = (x + 0.1 * direction).clamp(0, 1)

    def ce(images):
        return F.cross_entropy(images.flatten(1) @ weight.T + bias, y)

    expected = 0.3 * ce(x) + 0.7 * ce(x_fgsm)
    assert defense.training_loss(model, x, y).item() == pytest.approx(expected.item(), rel=1e-5)
    assert not x.requires_grad  # the caller's batch is left alone
    assert AdversarialTraining(rho=1.0).training_loss(model, x, y).item() == pytest.approx(ce(x).item(), rel=1e-5)


def test_adversarial_training_validates_its_parameters():
    with pytest.raises(ValueError, match="eps"):
        AdversarialTraining(eps=-0.1)
    with pytest.raises(ValueError, match="rho"):
        AdversarialTraining(rho=1.5)


def test_adversarial_training_is_more_robust_to_fgsm(digits):
    x, y = digits.test_x[:200], digits.test_y[:200]
    fgsm = get_attack("fgsm")
    robust = {}
    for name, params in (("undefended", {}), ("adv-training", {"eps": 0.2})):
        model = trained(digits, name, epochs=5, batch_size=64, **params).deployed()
        with torch.no_grad():
            robust[name] = (model(fgsm.run(model, x, y, 0.15)).argmax(1) == y).float().mean().item()
    # Seeds 0-2 gave gaps of 0.11-0.14 (e.g. 0.365 vs 0.475 at seed 0).
    assert robust["adv-training"] >= robust["undefended"] + 0.05, robust


# ---- defensive distillation


def test_distilled_student_is_deployed_at_temperature_one(digits, monkeypatch):
    defense = defenses.get("distillation").build(temperature=10.0, epochs=5, batch_size=64, lr=1e-2)
    defense.setup(digits.input_spec(), seed=0, device=CPU)
    captured = {}
    soft_labels = defense.soft_labels

    def record(teacher, x):
        captured["teacher"], captured["soft"] = teacher, soft_labels(teacher, x)
        return captured["soft"]

    monkeypatch.setattr(defense, "soft_labels", record)
    defense.fit(digits, seed=0, progress=False)

    soft, student = captured["soft"], defense.deployed()
    assert defense.modules() == {"model": student} and captured["teacher"] is not student
    assert torch.allclose(soft.sum(1), torch.ones(len(soft)))
    with torch.no_grad():
        logits = student(digits.train_x)
        test_accuracy = (student(digits.test_x).argmax(1) == digits.test_y).float().mean()

    def entropy(p):
        return -(p * p.clamp_min(1e-30).log()).sum(1).mean()

    # The student learned the soft labels at temperature T (seeds 0-2: KL 0.04-0.08) ...
    assert F.kl_div(F.log_softmax(logits / 10.0, dim=1), soft, reduction="batchmean") < 0.2
    # ... so at T = 1 its logits are ~T times too large for them: a far sharper softmax (seeds 0-2: ~10x
    # less entropy), the saturation that makes distilled networks' gradients vanish (Papernot et al.).
    assert entropy(F.softmax(logits, dim=1)) < 0.25 * entropy(soft)
    assert (logits.argmax(1) == soft.argmax(1)).float().mean() > 0.9
    assert test_accuracy > 0.8


def test_distillation_validates_the_temperature():
    with pytest.raises(ValueError, match="temperature"):
        defenses.get("distillation").build(temperature=0.0)
