"""Tests for the torchattacks rows of ``advbench bench attacks`` (bench/benchmark.py ``torchattacks_cases``):
torchattacks is optional, so the module is skipped without it. A tiny CNN on sklearn's 8x8 digits, seed 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.benchmark import TORCHATTACKS_SUFFIX, _selected, autoattack_cases, compare_strength, torchattacks_cases
from bench.registry import attacks

pytest.importorskip("torchattacks")

N = 24


@pytest.fixture(scope="module")
def net(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        for i in range(0, len(digits.train_x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(digits.train_x[i:i + 64]), digits.train_y[i:i + 64]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        right = model(digits.test_x).argmax(1) == digits.test_y
    idx = right.nonzero().flatten()[:N]
    return model, digits.test_x[idx], digits.test_y[idx]


def test_cases_cover_every_member_in_both_norms_and_select_as_a_group():
    cases = torchattacks_cases()
    assert {c.attack for c in cases} == {f"{a}{s}" for a in ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square",
                                                            "autoattack") for s in ("", "-l2")}
    assert all(c.attack in attacks.names() and c.name.endswith(TORCHATTACKS_SUFFIX) for c in cases)
    assert len({c.name for c in cases}) == len(cases)
    # "torchattacks" picks these rows and none of the ART ones, whose registry names they share.
    assert all(_selected(c, ["torchattacks"]) for c in cases)
    assert not any(_selected(c, ["torchattacks"]) for c in autoattack_cases())
    assert _selected(cases[0], [cases[0].name]) and not _selected(cases[1], [cases[0].name])


@pytest.mark.parametrize("label", ["apgd-ce eps=0.1", "apgd-ce-l2 eps=1.0", "square eps=0.1"])
def test_baseline_respects_the_budget_and_the_harness_is_not_weaker(net, label):
    model, x, y = net
    case = next(c for c in torchattacks_cases() if c.name.startswith(label + " "))
    adv_b = case.baseline(model, x, y).cpu()
    adv_h = attacks.get(case.attack).build(**case.params).run(model, x, y, case.budget, batch_size=N,
                                                               device=torch.device("cpu"), seed=0)
    for adv in (adv_b, adv_h):
        d = (adv - x).flatten(1)
        size = d.abs().amax(1) if "l2" not in case.attack else d.norm(dim=1)
        assert size.max() <= case.budget + 1e-4 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv_b).argmax(1) != y).any()  # the baseline does attack
    assert compare_strength(model, x, adv_h, adv_b, y, torch.device("cpu"))["harness vs baseline"] != "weaker (95%)"


def test_compare_strength_counts_disagreements_and_flags_a_weaker_harness(net):
    model, x, y = net
    case = next(c for c in torchattacks_cases() if c.name.startswith("apgd-ce eps=0.1 "))
    adv = case.baseline(model, x, y).cpu()
    with torch.no_grad():
        fooled = int((model(adv).argmax(1) != y).sum())
    assert fooled >= 8  # enough that doing nothing is outside the interval
    same = compare_strength(model, x, adv, adv, y, torch.device("cpu"))
    assert same["harness vs baseline"] == "equal (95%)" and same["fooled only by h/b"] == "0 / 0"
    nothing = compare_strength(model, x, x, adv, y, torch.device("cpu"))  # a harness that leaves x alone
    assert nothing["harness vs baseline"] == "weaker (95%)" and nothing["fooled only by h/b"] == f"0 / {fooled}"
