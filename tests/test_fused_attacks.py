"""Tests for ``Attack.run_budgets``: several budgets of one attack as one job (issue 13, fused batches).

Whatever the backend, budget i must come back exactly as ``run`` with budget i, its seed and its targets gives
it; the torch loop of FGSM, BIM and PGD fuses the budgets' batches into one, the libraries' backends loop.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bench.attacks import get_attack

N_IMAGES = 26  # in batches of 8: three fused batches of 8 rows per budget, and a tail of 2 that runs alone
BATCH = 8


@pytest.fixture(scope="module")
def net():
    """An untrained small CNN (convolutions, then a linear layer: the layer whose matrix product's arithmetic
    depends on the batch's row count) and random 8x8 images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10)).eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(N_IMAGES, 1, 8, 8, generator=g), torch.randint(0, 10, (N_IMAGES,), generator=g)


class Guarded(nn.Module):
    """A surface with ``attack_logits`` (as a detector folded in): success is judged on other logits."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def attack_logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        bright = (x.flatten(1).mean(1, keepdim=True) > 0.5).float()
        return self.inner(x) + 2.0 * nn.functional.one_hot(labels, 10) * bright


def batch_rows(model: nn.Module, fn):
    """The row counts of the batches ``model`` sees while ``fn()`` runs, and ``fn()``'s result."""
    rows = []
    handle = model.register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    try:
        return rows, fn()
    finally:
        handle.remove()


def one_by_one(attack, model, x, y, budgets, seeds, targets):
    return [attack.run(model, x, y, b, targets=t, batch_size=BATCH, seed=s)
            for b, s, t in zip(budgets, seeds, targets)]


CASES = [
    ("fgsm", {}, [0.05, 0.1, 0.3]),
    ("fgsm-targeted", {}, [0.05, 0.2, 0.0, 0.3]),  # random targets, drawn per budget from its seed
    ("fgsm-targeted", {"target": "least-likely"}, [0.1, 0.2]),
    ("bim", {"steps": 3}, [0.05, 0.1, 0.2]),
    ("bim", {"steps": 3, "step_size": 0.02}, [0.05, 0.1]),
    ("pgd-linf", {"steps": 3}, [0.0, 0.05, 0.1, 0.3]),
    # short steps, so the random start (drawn per budget from its seed) still shows in the result
    ("pgd-linf", {"steps": 2, "rel_stepsize": 0.1}, [0.05, 0.1, 0.3]),
    ("pgd-linf", {"steps": 3, "random_start": False}, [0.05, 0.1]),
    ("pgd-l2", {"steps": 3}, [0.5, 1.0, 2.0]),
    ("pgd-l2", {"steps": 3, "rel_stepsize": 0.3}, [0.25, 3.0]),
]


@pytest.mark.parametrize("name,params,budgets", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fused_budgets_equal_the_runs_one_by_one_bit_for_bit(net, name, params, budgets):
    model, x, y = net
    attack = get_attack(name, params)
    assert attack.backend == "torch" and attack.fuses_budgets
    seeds, targets = [3 * i + 1 for i in range(len(budgets))], [None] * len(budgets)
    rows, fused = batch_rows(model, lambda: attack.run_budgets(model, x, y, budgets, seeds=seeds, targets=targets,
                                                                batch_size=BATCH))
    expected = one_by_one(attack, model, x, y, budgets, seeds, targets)
    assert len(fused) == len(budgets)
    for budget, got, want in zip(budgets, fused, expected):
        assert torch.equal(got, want), budget
        if budget == 0:
            assert torch.equal(got, x)  # a zero budget returns the images, as run does
    moving = sum(b > 0 for b in budgets)
    assert BATCH * moving in rows  # the budgets' batches went through the model together
    # ... but not their 2-row tails, whose row count may change MKL's arithmetic (backends.FUSED_ROW_BLOCK)
    assert N_IMAGES % BATCH * moving not in rows and N_IMAGES % BATCH in rows


def test_explicit_targets_per_budget_mix_targeted_and_untargeted_rows(net):
    model, x, y = net
    attack = get_attack("pgd-linf", {"steps": 3})
    budgets, seeds = [0.1, 0.1, 0.2], [0, 1, 2]
    targets = [None, (y + 3) % 10, None]
    fused = attack.run_budgets(model, x, y, budgets, seeds=seeds, targets=targets, batch_size=BATCH)
    for got, want in zip(fused, one_by_one(attack, model, x, y, budgets, seeds, targets)):
        assert torch.equal(got, want)
    assert not torch.equal(fused[0], fused[1])  # same budget and different targets and seeds: other examples


@pytest.mark.parametrize("name,budgets", [("pgd-linf", [0.05, 0.2, 0.4]), ("pgd-l2", [1.0, 3.0]), ("fgsm", [0.1, 0.3])])
def test_fused_budgets_keep_the_success_logits_of_a_guarded_surface(net, name, budgets):
    model, x, y = net
    surface = Guarded(model)
    attack = get_attack(name, {"steps": 4} if name != "fgsm" else {})
    seeds, targets = list(range(len(budgets))), [None] * len(budgets)
    fused = attack.run_budgets(surface, x, y, budgets, seeds=seeds, targets=targets, batch_size=BATCH)
    for got, want in zip(fused, one_by_one(attack, surface, x, y, budgets, seeds, targets)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["art", "foolbox"])
def test_library_backends_do_not_fuse_and_give_the_runs_one_by_one(net, backend):
    model, x, y = net
    attack = get_attack("pgd-linf", {"steps": 2, "backend": backend})
    assert not attack.fuses_budgets
    budgets, seeds, targets = [0.05, 0.0, 0.2], [0, 1, 2], [None] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = attack.run_budgets(model, x, y, budgets, seeds=seeds, targets=targets, batch_size=BATCH)
        expected = one_by_one(attack, model, x, y, budgets, seeds, targets)
    for got, want in zip(fused, expected):
        assert torch.equal(got, want)
    assert not torch.equal(fused[0], fused[2])


def test_which_attacks_fuse_budgets():
    assert all(get_attack(name).fuses_budgets for name in ("fgsm", "fgsm-targeted", "bim", "pgd-linf", "pgd-l2"))
    # EOT serves stochastic defenses, whose draws from the global generator a fused batch cannot repeat
    assert not get_attack("pgd-linf", {"eot": 2}).fuses_budgets
    assert not get_attack("fgsm", {"backend": "art"}).fuses_budgets
    # no fused loop: one run per budget (APGD's restarts attack data-dependent subsets, whose row counts
    # the separate runs' arithmetic depends on)
    assert not get_attack("cw-l2").fuses_budgets and not get_attack("apgd-ce").fuses_budgets


def test_run_budgets_without_a_fused_loop_gives_the_runs_one_by_one(net):
    model, x, y = net
    attack = get_attack("pgd-linf", {"steps": 2, "eot": 2})
    budgets, seeds, targets = [0.1, 0.2], [5, 6], [None, None]
    fused = attack.run_budgets(model, x, y, budgets, seeds=seeds, targets=targets, batch_size=BATCH)
    for got, want in zip(fused, one_by_one(attack, model, x, y, budgets, seeds, targets)):
        assert torch.equal(got, want)


def test_run_budgets_checks_as_run_does(net):
    model, x, y = net
    attack = get_attack("pgd-linf", {"steps": 2})
    with pytest.raises(ValueError, match="one seed and one targets entry"):
        attack.run_budgets(model, x, y, [0.1, 0.2], seeds=[0], targets=[None, None])
    with pytest.raises(ValueError, match="must not be negative"):
        attack.run_budgets(model, x, y, [0.1, -0.2], seeds=[0, 1], targets=[None, None])
    with pytest.raises(ValueError, match="exceeds 1"):
        attack.run_budgets(model, x, y, [0.1, 2.0], seeds=[0, 1], targets=[None, None])
    with pytest.raises(ValueError, match="targets"):
        attack.run_budgets(model, x, y, [0.1], seeds=[0], targets=[y[:3]])
    with pytest.raises(ValueError, match="attack_logits are untargeted"):
        attack.run_budgets(Guarded(model), x, y, [0.1], seeds=[0], targets=[(y + 1) % 10])
    assert attack.run_budgets(model, x, y, [], seeds=[], targets=[]) == []
    empty = attack.run_budgets(model, x[:0], y[:0], [0.1, 0.2], seeds=[0, 1], targets=[None, None])
    assert [e.shape for e in empty] == [x[:0].shape] * 2
