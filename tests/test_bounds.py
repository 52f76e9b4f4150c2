"""Deterministic certificates (bench/certify/bounds.py, issue 27): interval bound propagation and DeepZ, and the
ibp-trained defense (defenses/ibp.py), on tiny random nets of 2x6x6 images and tiny nets trained on sklearn's
8x8 digits.

Soundness is checked against the inputs an attacker finds: random points of the ball and PGD (20 restarts of 20
steps, each restart pushing toward another class) never reach a margin below its certified lower bound."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks import get_attack
from bench.certify import Unsupported
from bench.certify import bounds
from bench.certify.bounds import certify_bounds, check_supported, margin_lower_bounds, worst_case_logits
from bench.models import InputSpec, Normalize, build_architecture
from bench.registry import defenses
from tests.conftest import trained_defense

SHAPE = (2, 6, 6)
K = 5
TOL = 1e-5  # float32: a margin an attack finds may sit this much below a bound that is tight there


def _randomize_batchnorm(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.normal_(1, 0.3)
            m.bias.data.normal_(0, 0.2)
    return net.eval()


def conv_net() -> nn.Module:
    """Every IBP rule at once: Normalize, Conv2d, BatchNorm, ReLU, MaxPool, Flatten, nested Sequential, Tanh,
    Dropout; the last Linear elided."""
    torch.manual_seed(1)
    return _randomize_batchnorm(nn.Sequential(
        Normalize((0.5, 0.4), (0.3, 0.2)), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Sequential(nn.Linear(36, 16), nn.Tanh(), nn.Dropout(0.3)),
        nn.Linear(16, K)))


def mlp() -> nn.Module:
    """A ReLU MLP DeepZ takes (Normalize in front, BatchNorm1d and Dropout inside)."""
    torch.manual_seed(2)
    return _randomize_batchnorm(nn.Sequential(
        Normalize((0.5, 0.4), (0.3, 0.2)), nn.Flatten(), nn.Linear(72, 24), nn.ReLU(), nn.Linear(24, 24),
        nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.5), nn.Linear(24, K)))


def relu_cnn() -> nn.Module:
    """A conv net DeepZ takes: strided conv, average pooling."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 6, 3, stride=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, K)).eval()


NETS = {"conv": conv_net, "mlp": mlp, "relu-cnn": relu_cnn}
DEEPZ_NETS = ("mlp", "relu-cnn")
# Budgets at which these nets certify some images and not others (so both outcomes are checked).
EPS = {"linf": 0.01, "l2": 0.04}


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def margins_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = model(x)
    return z.gather(1, y[:, None]) - z


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / n).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))
    return (x0 + delta).clamp(0, 1)  # clipping to [0, 1] only shrinks |delta|: still in the ball


def attack_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                   restarts: int = 20, steps: int = 20, seed: int = 0, step: float | None = None) -> torch.Tensor:
    """(B, K): the smallest margin z_y - z_j seen per example and class, over every iterate of ``restarts`` PGD
    runs from random points of the ball (restart k pushes toward class y + 1 + k mod K; L∞ by the gradient's
    sign, L2 along the normalized gradient; steps of ``step``, default 2.5 ε / steps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    best = torch.full((len(x), classes), float("inf"))
    step = 2.5 * eps / steps if step is None else step
    for k in range(restarts):
        noise = torch.rand(x.shape, generator=g) * 2 - 1
        if norm == "l2":
            noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * torch.rand(len(x), 1, 1, 1, generator=g)
        xa = _project(x + eps * noise, x, eps, norm)
        target = (y + 1 + k) % classes
        for _ in range(steps + 1):
            xa = xa.detach().requires_grad_(True)
            m = margins_of(model, xa, y)
            best = torch.minimum(best, m.detach())
            (grad,) = torch.autograd.grad(m.gather(1, target[:, None]).sum(), xa)
            direction = grad.sign() if norm == "linf" else grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(
                -1, 1, 1, 1)
            xa = _project(xa.detach() - step * direction, x, eps, norm)
    return best


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("net, method", [("conv", "ibp"), ("mlp", "ibp"), ("mlp", "deepz"), ("relu-cnn", "ibp"),
                                         ("relu-cnn", "deepz")])
def test_bounds_are_sound_against_random_points_and_pgd(net, method, norm):
    model, x = NETS[net](), images()
    y = model(x).argmax(1)
    eps = EPS[norm]
    lower = margin_lower_bounds(model, x, y, eps, norm=norm, method=method).detach()
    found = attack_margins(model, x, y, eps, norm)
    assert torch.all(found >= lower - TOL), f"{method} {norm}: a margin below its bound by {(lower - found).max()}"
    assert torch.all(lower.gather(1, y[:, None]) == 0)
    certified = certify_bounds(model, x, y, eps, norm=norm, method=method, batch_size=3)
    others = found.masked_fill(F.one_hot(y, K).bool(), float("inf"))
    assert torch.all((others[certified] > 0)), "PGD broke a certified example"
    assert 0 < int(certified.sum()), f"{net} {method} {norm}: nothing certified at {eps}: the check is vacuous"


def linear_net() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(Normalize((0.5, 0.4), (0.3, 0.2)), nn.Flatten(), nn.Linear(72, K)).eval()


@pytest.mark.parametrize("method", ["ibp", "deepz"])
def test_bounds_are_exact_where_the_network_is_affine_on_the_ball(method):
    """Where the network is affine on the ball (a linear model; DeepZ on a ReLU CNN whose ReLUs are all stable at a
    tiny ε), the margin bound is the true minimum, which the attack finds (to the slack): a check with teeth."""
    x = 0.25 + 0.5 * images()  # the balls stay inside [0, 1]
    cases = [(linear_net(), "linf", 0.05), (linear_net(), "l2", 0.2)]
    if method == "deepz":
        cases.append((relu_cnn(), "linf", 2e-4))
    for model, norm, eps in cases:
        y = model(x).argmax(1)
        lower = margin_lower_bounds(model, x, y, eps, norm=norm, method=method).detach()
        # one restart per other class; L2 steps of ε / 2 close in on the optimal direction (halving the angle)
        found = attack_margins(model, x, y, eps, norm, restarts=K - 1, step=eps / 2 if norm == "l2" else None)
        torch.testing.assert_close(lower, found, atol=5e-4, rtol=0)


def test_l2_first_layer_box_is_the_exact_per_unit_range():
    """L2 through Normalize and a zero-padded Conv2d: each output unit's radius is ε·‖∂unit/∂x‖₂, the exact
    range over the ball (inside [0, 1]), border positions included."""
    model, x, eps = conv_net(), 0.25 + 0.5 * images(2), 0.05
    front = model[:2]
    jacobian = torch.autograd.functional.jacobian(lambda v: front(v.view(1, *SHAPE)).flatten(), x[0].flatten())
    _, center, radius, _ = bounds._l2_start(bounds._network(model, "ibp"), x, eps)
    torch.testing.assert_close(radius[0].flatten(), eps * jacobian.norm(dim=1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(center, front(x).detach(), atol=1e-6, rtol=1e-5)


def test_ibp_at_eps_zero_certifies_exactly_the_correct_examples():
    for net in NETS.values():
        model, x = net(), images(16, seed=1)
        pred = model(x).argmax(1)
        y = torch.where(torch.arange(16) % 3 == 0, (pred + 1) % K, pred)  # a third misclassified
        for norm in ("linf", "l2"):
            assert torch.equal(certify_bounds(model, x, y, 0.0, norm=norm), pred == y)
            exact = margins_of(model, x, y).detach()
            assert torch.allclose(margin_lower_bounds(model, x, y, 0.0, norm=norm).detach(), exact, atol=1e-4)


@pytest.mark.parametrize("method", ["ibp", "deepz"])
def test_bounds_loosen_monotonically_with_eps(method):
    # IBP: interval arithmetic is inclusion-monotone, so a larger ball never gives a larger bound. DeepZ's ReLU
    # relaxation is not monotone in l, u in theory; on these nets it is (asserted as measured).
    for name in (DEEPZ_NETS if method == "deepz" else NETS):
        model, x = NETS[name](), images()
        y = model(x).argmax(1)
        for norm, grid in (("linf", [0, 0.002, 0.01, 0.03, 0.1]), ("l2", [0, 0.01, 0.04, 0.2, 1.0])):
            lbs = [margin_lower_bounds(model, x, y, e, norm=norm, method=method).detach() for e in grid]
            for a, b in zip(lbs, lbs[1:]):
                assert torch.all(b <= a + 1e-6), f"{name} {method} {norm}"
            flags = [certify_bounds(model, x, y, e, norm=norm, method=method) for e in grid]
            assert all(bool((b <= a).all()) for a, b in zip(flags, flags[1:]))


def test_deepz_is_at_least_as_tight_as_ibp():
    """DeepZ here carries IBP's box beside the zonotope and takes the larger margin bound: never looser than IBP,
    by construction (the zonotope alone can be: test_the_zonotope_alone_can_be_looser_than_ibp)."""
    for name in DEEPZ_NETS:
        model, x = NETS[name](), images(16)
        y = model(x).argmax(1)
        for norm, eps in (("linf", 0.02), ("linf", 0.1), ("l2", 0.1), ("l2", 1.0)):
            ibp = margin_lower_bounds(model, x, y, eps, norm=norm).detach()
            deepz = margin_lower_bounds(model, x, y, eps, norm=norm, method="deepz").detach()
            assert torch.all(deepz >= ibp)
            assert torch.all(certify_bounds(model, x, y, eps, norm=norm, method="deepz")
                             >= certify_bounds(model, x, y, eps, norm=norm))


TRAIN = {"arch": "monteiro-mlp", "epochs": 6, "batch_size": 64, "lr": 3e-3}  # ~0.2-0.5 s each on one core
CERT_EPS = 0.05
# Measured, seeds 0 and 1, on the 360 test digits at L∞ 0.05 (clean / IBP-certified / DeepZ-certified / PGD-20):
#   undefended                 0.95 / 0.00 / 0.75 / 0.85   and 0.94 / 0.00 / 0.74 / 0.86
#   ibp-trained eps 0.1        0.84 / 0.66 / 0.72 / 0.78   and 0.88 / 0.72 / 0.76 / 0.81
# The test asks for 40 points more IBP-certified than undefended, on seed 0.
MARGIN = 0.40


@pytest.fixture(scope="module")
def trained(digits):
    return {name: trained_defense(digits, name, seed=0, **TRAIN, **params).deployed().eval()
            for name, params in (("undefended", {}), ("ibp-trained", {"eps": 0.1, "kappa": 0.5}))}


def test_ibp_trained_certifies_more_than_undefended(digits, trained):
    x, y = digits.test_x, digits.test_y
    rate = {}
    for name, model in trained.items():
        certified = certify_bounds(model, x, y, CERT_EPS, batch_size=128)
        deepz = certify_bounds(model, x, y, CERT_EPS, method="deepz", batch_size=128)
        adv = get_attack("pgd-linf", {"steps": 20}).run(model, x, y, CERT_EPS, seed=0)
        with torch.no_grad():
            robust = model(adv).argmax(1) == y
            clean = model(x).argmax(1) == y
        assert not bool((certified & ~robust).any()) and not bool((deepz & ~robust).any()), f"{name}: PGD broke one"
        assert bool((deepz >= certified).all())
        rate[name] = certified.float().mean().item()
        assert clean.float().mean() > 0.8, name
    assert rate["ibp-trained"] >= rate["undefended"] + MARGIN, rate


def test_trained_net_bounds_hold_against_pgd_with_restarts(digits, trained):
    model = trained["ibp-trained"]
    x, y = digits.test_x[:24], digits.test_y[:24]
    for norm, eps in (("linf", CERT_EPS), ("l2", 0.3)):
        found = attack_margins(model, x, y, eps, norm)  # 20 restarts of 20 steps
        for method in ("ibp", "deepz"):
            lower = margin_lower_bounds(model, x, y, eps, norm=norm, method=method).detach()
            assert torch.all(found >= lower - TOL), (norm, method)


def test_the_zonotope_alone_can_be_looser_than_ibp(digits, trained):
    """Why DeepZ keeps IBP's box beside its zonotope: on an IBP-trained net the zonotope alone (Singh et al.'s
    DeepZ, as ART's) bounds some margins below IBP (an unstable ReLU's parallelogram reaches λl < 0 where the box
    stops at 0). Measured on seed 0 at L∞ 0.1: 138 of 3,240 margins; 160 images certified by IBP, 202 by the
    zonotope alone, 202 by the product."""
    model, x, y = trained["ibp-trained"], digits.test_x, digits.test_y
    ibp = margin_lower_bounds(model, x, y, 0.1).detach()
    alone = bounds._zonotope_margins(bounds._network(model, "deepz"), x, y, 0.1, "linf", product=False).detach()
    deepz = margin_lower_bounds(model, x, y, 0.1, method="deepz").detach()
    assert int((alone < ibp - 1e-4).sum()) > 20
    assert torch.all(deepz >= ibp) and torch.any(deepz > ibp + 1e-3)


def _art_quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))  # ART prints its inferred reshapes
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


class _ArtNet(nn.Module):
    """What ART 1.20's converters take: Conv2d/Linear/ReLU children, the reshape in ``forward``."""

    def __init__(self, conv: bool):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(2, 3, 3) if conv else None
        self.relu0 = nn.ReLU() if conv else None
        self.fc1, self.relu1 = nn.Linear(48 if conv else 72, 16), nn.ReLU()
        self.fc2, self.relu2, self.fc3 = nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, K)

    def layers(self) -> nn.Sequential:
        front = [self.conv, self.relu0] if self.conv is not None else []
        return nn.Sequential(*front, nn.Flatten(), self.fc1, self.relu1, self.fc2, self.relu2, self.fc3).eval()

    def forward(self, x):
        if self.conv is not None:
            x = self.relu0(self.conv(x))
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x.flatten(1))))))


@pytest.mark.parametrize("conv", [False, True])
def test_ibp_matches_art_interval_bounds(conv):
    from art.estimators.certification.interval import PyTorchIBPClassifier

    net, x, eps = _ArtNet(conv), images(6), 0.03
    model = net.layers()
    y = model(x).argmax(1)
    shape = SHAPE if conv else (72,)
    with _art_quiet():
        art = PyTorchIBPClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=K,
                                   clip_values=(0.0, 1.0), device_type="cpu")
        boxes = art.predict_intervals(x.reshape(len(x), *shape).numpy(), bounds=eps, limits=[0.0, 1.0])
    # Our logit box (the head not elided) is ART's, to float rounding.
    state = bounds._network(model, "ibp")
    c, r = bounds._linf_box(x, eps)
    for layer, kind in zip(state.layers, state.kinds):
        c, r = bounds._ibp_layer(layer, kind, c, r)
    np.testing.assert_allclose((c - r).detach().numpy(), boxes[:, 0], atol=1e-5)
    np.testing.assert_allclose((c + r).detach().numpy(), boxes[:, 1], atol=1e-5)
    # With the head elided, our margins are at least as tight as ART's lower_y - upper_j.
    theirs = torch.from_numpy(boxes[np.arange(len(x)), 0, y.numpy()][:, None] - boxes[:, 1])
    ours = margin_lower_bounds(model, x, y, eps).detach()
    others = ~F.one_hot(y, K).bool()
    assert torch.all(ours[others] >= theirs[others] - 1e-4)
    assert torch.any(ours[others] > theirs[others] + 1e-3)


def test_zonotope_matches_art_deepz():
    from art.estimators.certification.deep_z import PytorchDeepZ

    net, x, eps = _ArtNet(conv=False), images(6), 0.03
    model = net.layers()
    y = model(x).argmax(1)

    def to_zonotope(sample, bound):  # ART's default pre-processing fails on NumPy 2; this is the same box
        lo, hi = np.clip(sample - bound, 0, 1), np.clip(sample + bound, 0, 1)
        return ((lo + hi) / 2)[None], np.diag((hi - lo) / 2)

    with _art_quiet():
        art = PytorchDeepZ(model=net, loss=nn.CrossEntropyLoss(), input_shape=(72,), nb_classes=K,
                           clip_values=(0.0, 1.0), device_type="cpu", concrete_to_zonotope=to_zonotope)
        centers, generators = art.predict_zonotopes(x.flatten(1).numpy(), eps)
    theirs = torch.stack([torch.from_numpy(c[0, y[i]] - c[0] - np.abs(g[:, [y[i]]] - g).sum(0))
                          for i, (c, g) in enumerate(zip(centers, generators))])
    alone = bounds._zonotope_margins(bounds._network(model, "deepz"), x, y, eps, "linf", product=False).detach()
    torch.testing.assert_close(alone, theirs, atol=1e-4, rtol=0)  # ours: less SLACK · (1 + |terms|)


class Square(nn.Module):
    def forward(self, x):
        return x * x


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("method, model, message", [
    ("ibp", nn.Sequential(nn.Flatten(), Square(), nn.Linear(72, K)),
     "ibp: layer '1' (Square) has no interval rule here; supported: Linear, Conv2d, ReLU"),
    ("deepz", nn.Sequential(nn.Flatten(), nn.Linear(72, 8), nn.Sequential(Square()), nn.Linear(8, K)),
     "deepz: layer '2.0' (Square) has no zonotope rule here"),
    ("ibp", nn.Sequential(nn.Flatten(), ScaledLinear(72, K)), "ibp: layer '1' (ScaledLinear) has no interval rule"),
    ("deepz", nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, K)),
     "deepz: MaxPool2d has no zonotope rule here (layer '2'; only ReLU of the non-linear layers): ibp takes it"),
    ("deepz", nn.Sequential(nn.Flatten(), nn.Linear(72, 8), nn.Tanh(), nn.Linear(8, K)),
     "deepz: Tanh has no zonotope rule here"),
    ("ibp", nn.Sequential(nn.Flatten(), nn.BatchNorm1d(72, track_running_stats=False), nn.Linear(72, K)),
     "ibp: layer '1' (BatchNorm1d): no running statistics"),
    ("ibp", nn.Sequential(nn.Flatten(), nn.Linear(72, 8), nn.LeakyReLU(-0.5), nn.Linear(8, K)),
     "negative_slope -0.5 < 0 is not monotone"),
    ("ibp", _ArtNet(conv=False), "ibp: the model (_ArtNet) is a container with its own forward"),
    ("ibp", nn.Sequential(nn.Conv2d(2, 3, 3)), "the network's output has shape (3, 4, 4) per image"),
    ("ibp", nn.Sequential(nn.Flatten(), nn.Linear(10, K)), "ibp: the network does not take 2x6x6 images"),
])
def test_unsupported_networks_say_why(method, model, message):
    with pytest.raises(Unsupported) as e:
        check_supported(model, method, SHAPE)
    assert message in str(e.value)
    if "output" not in message and "does not take" not in message:
        with pytest.raises(Unsupported):
            certify_bounds(model, images(2), torch.zeros(2, dtype=torch.long), 0.1, method=method)


def test_deepz_size_limit():
    big = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64 * 32 * 32, 10))
    with pytest.raises(Unsupported, match=r"deepz: the zonotope needs up to [\d,]+ MiB per image .* over its 512 "
                                          r"MiB limit: use ibp"):
        check_supported(big, "deepz", (3, 32, 32))
    check_supported(big, "ibp", (3, 32, 32))
    assert bounds._deepz_bytes(bounds._network(mlp(), "deepz"), bounds._shapes(
        bounds._network(mlp(), "deepz"), SHAPE, torch.device("cpu")), "linf") < 2**20


@pytest.mark.parametrize("arch, shape, ibp, deepz", [
    ("strauss-mnist", (1, 28, 28), True, False), ("monteiro-cnn", (1, 28, 28), True, False),
    ("abbasi-mnist", (1, 28, 28), True, False), ("monteiro-mlp", (1, 28, 28), True, True),
    ("strauss-cifar", (3, 32, 32), True, False), ("vgg16", (3, 32, 32), True, False),
    ("resnet18", (3, 32, 32), False, False),
])
def test_the_harness_architectures(arch, shape, ibp, deepz):
    with torch.device("meta"):
        model = build_architecture(arch, InputSpec(*shape, num_classes=10, mean=(0.5,) * shape[0],
                                                   std=(0.25,) * shape[0]))
    for method, expected in (("ibp", ibp), ("deepz", deepz)):
        if expected:
            check_supported(model, method, shape)
        else:
            with pytest.raises(Unsupported):
                check_supported(model, method, shape)


def test_l2_through_normalize_is_the_folded_first_layer():
    """L2 with Normalize in front: the first layer's bound is ε·‖W_i / std‖₂ (tighter than ε / min std), and a
    purely linear model's margin bound is exact when the ball stays inside [0, 1]."""
    torch.manual_seed(5)
    lin = nn.Linear(72, K)
    model = nn.Sequential(Normalize((0.5, 0.4), (0.3, 0.2)), nn.Flatten(), lin).eval()
    x = 0.25 + 0.5 * images(4)  # the ball of radius 0.1 stays in [0, 1]
    y = model(x).argmax(1)
    w = lin.weight / torch.tensor([0.3, 0.2]).repeat_interleave(36)
    exact = margins_of(model, x, y).detach() - 0.1 * (w[y][:, None] - w[None]).norm(dim=2)
    torch.testing.assert_close(margin_lower_bounds(model, x, y, 0.1, norm="l2").detach(), exact, atol=1e-4, rtol=0)


def test_worst_case_logits_train_through_the_bound():
    model, x = mlp().train(), images(6)
    y = torch.arange(6) % K
    z = worst_case_logits(model, x, y, 0.02)
    assert torch.all(z.gather(1, y[:, None]) == 0)
    assert torch.all(z >= -margins_of(model.eval(), x, y).detach() - 1e-5)  # the worst case bounds the clean one
    model.train()
    F.cross_entropy(z, y).backward()
    assert model[2].weight.grad is not None and model[2].weight.grad.abs().sum() > 0
    assert model.training and model[7].training, "the model's modes are its own"


@pytest.mark.parametrize("params, message", [
    ({"eps": 0}, "eps must be in (0, 1] for norm linf, got 0"),
    ({"eps": 8}, "eps must be in (0, 1] for norm linf, got 8.0: images are in [0, 1] (8/255, not 8)"),
    ({"kappa": 1.5}, "kappa must be in [0, 1], got 1.5"),
    ({"kappa": -0.1}, "kappa must be in [0, 1], got -0.1"),
    ({"warmup": -1}, "warmup must be >= 0 epochs, got -1"),
    ({"ramp": -2}, "ramp must be >= 0 epochs, got -2"),
    ({"epochs": 4, "warmup": 2, "ramp": 2}, "warmup + ramp must be < epochs (at least one epoch at the full eps): "
                                            "warmup 2 + ramp 2 >= epochs 4"),
    ({"epochs": 1}, "warmup 0 + ramp 1 >= epochs 1"),
])
def test_ibp_trained_parameters_fail_with_a_clear_error(params, message):
    with pytest.raises(ValueError) as e:
        defenses.get("ibp-trained").build(**params)
    assert message in str(e.value)


def test_ibp_trained_schedule_warms_up_then_ramps_then_holds(digits):
    build = defenses.get("ibp-trained").build
    assert build(epochs=5).ramp == 2 and build(epochs=6, warmup=2).ramp == 2 and build(epochs=2).ramp == 1
    assert build().eps == 0.3 and build().kappa == 0.5 and build(eps="2/10").eps == pytest.approx(0.2)
    # digits: 1,437 training images, batches of 64: 23 a epoch; warm-up 1 epoch, ramp 2 (46 batches), then 1.
    defense = build(**{**TRAIN, "epochs": 4}, eps=0.1, kappa=0.4, warmup=1, ramp=2)
    defense.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    seen = []
    schedule = defense.schedule
    defense.schedule = lambda batch: seen.append(schedule(batch)) or seen[-1]
    defense.fit(digits, seed=0, progress=False)
    assert len(seen) == 4 * 23 and set(seen[:23]) == {(0.0, 1.0)}
    assert seen[23] == pytest.approx((0.1 / 46, 1 - 0.6 / 46)) and seen[24] == pytest.approx((0.2 / 46, 1 - 1.2 / 46))
    assert seen[68] == pytest.approx((0.1, 0.4)) and seen[67][0] < 0.1 and set(seen[68:]) == {seen[68]}


def test_ibp_trained_validates_the_architecture():
    defense = defenses.get("ibp-trained").build()
    defense.check_input_shape((1, 28, 28))  # auto: strauss-mnist
    defenses.get("ibp-trained").build(arch="vgg16").check_input_shape((3, 32, 32))
    with pytest.raises(ValueError, match="ibp-trained: arch 'resnet18': ibp: the model .* is a container with its "
                                         "own forward"):
        defenses.get("ibp-trained").build(arch="resnet18").check_input_shape((3, 32, 32))
    assert defenses.get("ibp-trained").version == "1"
