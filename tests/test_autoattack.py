"""Tests for bench/attacks/autoattack.py: APGD, APGD-T, FAB-T, Square and AutoAttack on a tiny CNN trained on
sklearn's 8x8 digits (conftest's ``digits``), fixed seeds."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bench.attacks import get_attack
from bench.attacks.fab import _boundary_step
from bench.registry import attacks

N = 32  # correctly classified test digits the attacks run on


@pytest.fixture(scope="module")
def net(digits):
    """A small CNN trained for a few seconds on the 8x8 digits, and N test digits it classifies correctly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        perm = torch.randperm(len(digits.train_x), generator=g)
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(digits.train_x[b]), digits.train_y[b]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        right = model(digits.test_x).argmax(1) == digits.test_y
    assert right.float().mean() > 0.9
    idx = right.nonzero().flatten()[:N]
    return model, digits.test_x[idx], digits.test_y[idx]


def robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def run(name, params, model, x, y, budget, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_attack(name, params).run(model, x, y, budget, **{"batch_size": 16, "seed": 0, **kw})


# (name, params, budget, highest accuracy allowed after the attack); clean accuracy is 1.
CASES = [
    ("apgd-ce", {"steps": 10}, 0.15, 0.5),
    ("apgd-ce", {"steps": 10, "backend": "art"}, 0.15, 0.5),
    ("apgd-dlr", {"steps": 10}, 0.15, 0.5),
    ("apgd-dlr", {"steps": 10, "backend": "art"}, 0.15, 0.5),
    ("apgd-t", {"steps": 10, "target_classes": 3}, 0.15, 0.5),
    ("fab-t", {"steps": 10, "target_classes": 3}, 0.15, 0.5),
    ("square", {"queries": 150}, 0.15, 0.7),
    ("square", {"queries": 100, "backend": "art"}, 0.15, 0.8),
    ("autoattack", {"version": "standard", "steps": 10, "target_classes": 3, "square_queries": 50}, 0.15, 0.5),
    ("autoattack", {"version": "rand", "steps": 10, "eot_draws": 2}, 0.15, 0.5),
    ("apgd-ce-l2", {"steps": 10}, 1.0, 0.5),
    ("apgd-dlr-l2", {"steps": 10}, 1.0, 0.5),
    ("apgd-t-l2", {"steps": 10, "target_classes": 3}, 1.0, 0.5),
    ("fab-t-l2", {"steps": 10, "target_classes": 3}, 1.0, 0.5),
    ("square-l2", {"queries": 150}, 1.5, 0.9),
    ("autoattack-l2", {"version": "standard", "steps": 10, "target_classes": 3, "square_queries": 20}, 1.0, 0.5),
]


@pytest.mark.parametrize("name,params,budget,max_acc", CASES,
                         ids=[f"{c[0]}-{c[1].get('backend', 'default')}-{c[1].get('version', '')}" for c in CASES])
def test_attack_lowers_accuracy_within_budget(net, name, params, budget, max_acc):
    model, x, y = net
    x_before = x.clone()
    adv = run(name, params, model, x, y, budget)
    assert torch.equal(x, x_before) and adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if attacks.get(name).factory.threat_model == "linf":
        assert delta.abs().max() <= budget + 1e-6
    else:
        assert delta.norm(dim=1).max() <= budget + 1e-5
    after = robust(model, adv, y).float().mean().item()
    assert after <= max_acc, f"{name} ({params}) left accuracy at {after:.3f} > {max_acc}"


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_steps(net):
    """Over a fixed set of seeds, APGD-CE leaves no more examples robust than PGD with as many steps."""
    model, x, y = net
    for name, pgd, eps in [("apgd-ce", "pgd-linf", 0.1), ("apgd-ce-l2", "pgd-l2", 0.7)]:
        kept_apgd = sum(robust(model, run(name, {"steps": 10}, model, x, y, eps, seed=s), y).sum().item()
                        for s in range(3))
        kept_pgd = sum(robust(model, run(pgd, {"steps": 10}, model, x, y, eps, seed=s), y).sum().item()
                       for s in range(3))
        assert 0 < kept_pgd and kept_apgd <= kept_pgd, (name, kept_apgd, kept_pgd)


class _NoBackward(torch.autograd.Function):
    """Identity whose backward pass fails: any gradient taken through it is an error."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("a gradient was taken")


class GradientTrap(nn.Module):
    """The model behind an input layer that refuses gradients and counts inputs that ask for one."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.asked = model, 0

    def forward(self, x):
        self.asked += int(x.requires_grad)
        return self.model(_NoBackward.apply(x))


@pytest.mark.parametrize("name,budget,queries", [("square", 0.15, 150), ("square-l2", 1.5, 150)])
def test_square_lowers_accuracy_without_a_gradient(net, name, budget, queries):
    model, x, y = net
    trap = GradientTrap(model)
    adv = run(name, {"queries": queries}, trap, x, y, budget)
    assert trap.asked == 0
    assert robust(model, adv, y).float().mean() < 0.9
    assert not attacks.get(name).factory.uses_gradients
    with pytest.raises(AssertionError, match="gradient was taken"):  # the trap springs on a gradient attack
        run("apgd-ce", {"steps": 2}, trap, x[:4], y[:4], budget if name == "square" else 0.1)


def test_only_square_is_marked_gradient_free():
    free = {n for n in attacks.names() if not attacks.get(n).factory.uses_gradients}
    assert {"square", "square-l2"} <= free
    assert not free & {"apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "autoattack", "autoattack-l2", "pgd-linf"}


@pytest.mark.parametrize("name,budget", [("autoattack", 0.1), ("autoattack-l2", 0.7)])
def test_autoattack_worst_case_is_the_and_of_its_members(net, name, budget):
    """An example survives AutoAttack exactly when it survives every member run alone on the whole set: the
    members run on the survivors only, and their per-example randomness makes that the same result."""
    model, x, y = net
    params = {"version": "standard", "steps": 10, "target_classes": 3, "square_queries": 40}
    aa = get_attack(name, params)
    together = robust(model, run(name, params, model, x, y, budget), y)
    alone = [robust(model, member.run(model, x, y, budget, batch_size=16, seed=0), y)
             for member in aa.members("standard")]
    assert [type(m).__name__ for m in aa.members("standard")][-1].startswith("Square")
    assert torch.equal(together, torch.stack(alone).all(0))
    assert 0 < together.sum() < len(y)  # a set where the worst case is not trivial
    assert any(not torch.equal(a, together) for a in alone)  # some member alone overstates robustness


def test_members_give_an_example_the_same_result_in_any_batch(net):
    model, x, y = net
    for name, params, eps in [("apgd-ce", {"steps": 5}, 0.1), ("square", {"queries": 30}, 0.1),
                              ("fab-t", {"steps": 5, "target_classes": 2}, 0.1),
                              ("square-l2", {"queries": 30}, 1.0)]:
        whole = run(name, params, model, x, y, eps, batch_size=len(x))
        assert torch.allclose(run(name, params, model, x, y, eps, batch_size=5), whole, atol=1e-5), name
        if name != "fab-t":  # FAB-T (one run from x per target, as AutoAttack's) draws nothing
            assert not torch.equal(run(name, params, model, x, y, eps, seed=1, batch_size=len(x)), whole), name


def test_apgd_t_and_fab_t_target_at_most_the_other_classes(net):
    model, x, y = net
    a, b = (run(n, {"steps": 3, "target_classes": 50}, model, x[:8], y[:8], 0.1) for n in ("apgd-t", "fab-t"))
    assert a.shape == b.shape == x[:8].shape  # 50 asked, 9 run: one per other class
    binary = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(ValueError, match="at least 4 classes"):
        run("apgd-t", {"steps": 2}, binary, x[:4], binary(x[:4]).argmax(1).detach(), 0.1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_boundary_step_reaches_the_hyperplane_inside_the_box(norm):
    g = torch.Generator().manual_seed(0)
    p, w = torch.rand(20, 30, generator=g), torch.randn(20, 30, generator=g)
    c = torch.randn(20, generator=g)
    d = _boundary_step(p, w, c, norm)
    assert torch.allclose((w * d).sum(1), c, atol=1e-4)
    assert (p + d).min() >= -1e-6 and (p + d).max() <= 1 + 1e-6
    # Away from the box, the L2 step is the plain projection c w / |w|^2 and the L-inf one c sign(w) / |w|_1.
    p, c = torch.full((20, 30), 0.5), c * 0.01
    free = c[:, None] * (w / w.square().sum(1, keepdim=True) if norm == "l2" else w.sign() / w.abs().sum(1, keepdim=True))
    assert torch.allclose(_boundary_step(p, w, c, norm), free, atol=1e-6)


def test_autoattack_versions(net):
    model, x, y = net
    aa = get_attack("autoattack", {"eot_draws": 20})
    assert [m.eot for m in aa.members("rand")] == [20, 20]
    assert [type(m).__name__ for m in aa.members("rand")] == ["APGDCE", "APGDDLR"]
    assert [type(m).__name__ for m in get_attack("autoattack-l2").members("standard")] == [
        "APGDCEL2", "APGDTL2", "FABTL2", "SquareL2"]

    class Noisy(nn.Module):  # predictions that change between calls: auto picks rand outside a plan
        def forward(self, x):
            return model(x) + torch.randn(len(x), 10)

    job = type("Job", (), {"x": x, "batch_size": 16, "device": torch.device("cpu"), "model": Noisy()})
    assert aa._resolve(job) == "rand"
    job.model = model
    assert aa._resolve(job) == "standard"


def test_plan_resolves_version_auto_per_defense(write_suite):
    """The plan picks rand for a stochastic defense and standard for the others, and the craft task's key
    names the version that runs; a version the suite names is kept."""
    from bench.config import load_suite
    from bench.plan import build_plan

    suite = load_suite(write_suite("""\
        name: aa
        seeds: [0]
        device: cpu
        datasets: [{name: digits, eval_size: 20}]
        defenses:
          - {name: undefended, params: {epochs: 1}}
          - {name: rse, params: {epochs: 1}}
        attacks:
          - {name: autoattack, params: {steps: 7}, budgets: [0.1]}
          - {name: autoattack, label: aa-standard, params: {version: standard, steps: 7}, budgets: [0.1]}
        """))
    # (steps: 7 tells these entries' tasks from any the plan adds of its own accord)
    crafts = [t for t in build_plan(suite).by_kind("craft")
              if t.config["attack"]["params"].get("steps") == 7 and t.config["budget"] == 0.1]
    # auto on the deterministic defense is its standard run: one task (one key) for both entries
    assert sorted((t.info["defense"], t.config["attack"]["params"]["version"]) for t in crafts) == [
        ("rse", "rand"), ("rse", "standard"), ("undefended", "standard")]
