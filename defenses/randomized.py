"""Randomized defenses: Random Self-Ensemble (Liu et al. 2018) and random layer sampling (Lee et al. 2021).

Both decide with randomness at test time, so both are ``stochastic``: two calls on the same images may
disagree. What they share lives here once:

* **Random layers.** Each defense puts ``RandomLayer``s into an ordinary registered architecture: a
  Gaussian noise layer before every convolution (RSE), or every parameterized layer chosen from one of M
  sub-models (layer sampling). A random layer draws *per example* (per element for noise), so k draws of
  B images are one forward pass of the input repeated k times: batched, no Python loop over draws.
* **Fresh or fixed draws.** By default every call draws anew from torch's global generator (seeded by the
  harness per task, so a run repeats exactly); randomness stays on in eval mode, since attack libraries
  call ``eval()``. ``FixedDraws`` fixes k draws (each from its own seed): the papers' threat model
  attacks one such sampled model (k = 1), Lee et al.'s Table 4 the average of k = 5, 10, 15.
* **The prediction** (``SelfEnsemble``) averages the softmax of ``passes`` fresh draws (log of the mean,
  so its cross-entropy is the ensemble's own loss).

Attack surfaces of both: ``deployed`` (the ``passes``-draw ensemble, fresh draws), ``single`` (one fresh
draw per call: the natural target of an EOT attack, which averages gradients over draws),
``fixed:<k>`` for k in ``FIXED_DRAW_COUNTS`` (mean softmax of k fixed draws; ``fixed:1`` is the papers'
"attack one sampled model"), and ``ensemble:<k>`` for k in ``ENSEMBLE_SIZES`` (the prediction from k fresh
draws: scoring on them, ``evaluate_on``, gives accuracy against the number of test-time samples without
training a model per number).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import DatasetSplits
from bench.defense import ClassifierDefense, default_architecture
from bench.models import InputSpec, build_architecture
from bench.registry import defenses

# The k of the ``fixed:<k>`` surfaces: Lee et al. 2021, Table 4 (attacking the average of k sampled models).
FIXED_DRAW_COUNTS = (1, 5, 10, 15)
# The k of the ``ensemble:<k>`` surfaces, the prediction from k fresh draws instead of ``forward_passes``:
# accuracy against the number of test-time samples (Lee et al. Table 6, Liu et al. Fig. 5) from one model.
ENSEMBLE_SIZES = (1, 5, 10, 15, 50)
# Rows (draws x images) per forward pass of an ensemble; more draws than fit are split into chunks.
MAX_ROWS_PER_PASS = 8192


# --------------------------------------------------------------------------- random layers


class RandomLayer(nn.Module):
    """A layer that draws randomness per example; ``index`` tells its draws from other layers' apart.

    ``fixed`` (set only for the length of a ``FixedDraws`` call) holds that call's draw seeds and the
    number of images per draw; None means fresh draws from the global generator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.index = 0
        self.fixed: tuple[tuple[int, ...], int] | None = None

    def generator(self, seed: int, device: torch.device) -> torch.Generator:
        # One stream per (draw seed, layer): a layer's draw does not depend on the other layers' shapes.
        return torch.Generator(device=device).manual_seed(seed * 1_000_003 + self.index)


class NoiseLayer(RandomLayer):
    """x + N(0, std²) noise, element-wise (Liu et al. 2018, Sec. 3: the "noise layer")."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std
        self._fixed_noise: dict[tuple, torch.Tensor] = {}  # (seed, shape, device) -> one draw's noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return x
        if self.fixed is None:
            return x + torch.randn_like(x) * self.std
        seeds, per_draw = self.fixed
        # One noise tensor per fixed draw, shared by every image of that draw (one sampled model).
        noise = torch.stack([self._draw(seed, x.shape[1:], x.device) for seed in seeds])
        noise = noise.unsqueeze(1).expand(len(seeds), per_draw, *x.shape[1:]).reshape(x.shape)
        return x + noise.to(x.dtype)

    def _draw(self, seed: int, shape: torch.Size, device: torch.device) -> torch.Tensor:
        key = (seed, tuple(shape), str(device))
        if key not in self._fixed_noise:  # attacks call the same draw hundreds of times
            self._fixed_noise[key] = torch.randn(shape, generator=self.generator(seed, device),
                                                 device=device) * self.std
        return self._fixed_noise[key]

    def extra_repr(self) -> str:
        return f"std={self.std}"


class SampledLayer(RandomLayer):
    """One layer of M sub-models; each example goes through the copy a categorical draw picks
    (Lee et al. 2021, Sec. 3.1: r_l(m), one sub-model per layer and sampled model)."""

    def __init__(self, copies: list[nn.Module], probs: torch.Tensor):
        super().__init__()
        self.copies = nn.ModuleList(copies)
        self.register_buffer("probs", probs.clone().float(), persistent=False)

    def choices(self, n: int, device: torch.device) -> torch.Tensor:
        """The sub-model index of each of ``n`` examples."""
        if self.fixed is None:
            return torch.multinomial(self.probs.to(device), n, replacement=True)
        seeds, per_draw = self.fixed
        picks = torch.cat([torch.multinomial(self.probs.to(device), 1, generator=self.generator(seed, device))
                           for seed in seeds])
        return picks.repeat_interleave(per_draw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pick = self.choices(len(x), x.device)
        # Each copy runs on its own examples only (no wasted work), then the rows go back in order.
        parts = {m: self.copies[m](x[pick == m]) for m in pick.unique().tolist()}
        first = next(iter(parts.values()))
        out = first.new_empty((len(x), *first.shape[1:]))
        for m, part in parts.items():
            out[pick == m] = part
        return out


def random_layers(net: nn.Module) -> list[RandomLayer]:
    return [m for m in net.modules() if isinstance(m, RandomLayer)]


def _number_layers(net: nn.Module) -> nn.Module:
    for i, layer in enumerate(random_layers(net)):
        layer.index = i
    return net


def _replace(module: nn.Module, make) -> None:
    """Replace, depth first, every submodule for which ``make(path, child)`` returns a module."""
    def walk(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}{name}"
            new = make(path, child)
            if new is not None:
                setattr(parent, name, new)
            else:
                walk(child, path + ".")

    walk(module, "")


# --------------------------------------------------------------------------- predictions and surfaces


def mean_softmax_scores(logits: torch.Tensor) -> torch.Tensor:
    """log(mean over draws of softmax) of logits shaped (draws, N, classes); finite where a mean underflows."""
    return torch.logsumexp(F.log_softmax(logits, dim=2), dim=0) - math.log(len(logits))


class SelfEnsemble(nn.Module):
    """The prediction: mean softmax over ``passes`` fresh draws, the draws batched as one input of
    ``passes`` x N rows (in chunks of at most ``rows_per_pass`` rows)."""

    def __init__(self, net: nn.Module, passes: int, rows_per_pass: int = MAX_ROWS_PER_PASS):
        super().__init__()
        self.net, self.passes, self.rows_per_pass = net, passes, rows_per_pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_chunk = max(1, self.rows_per_pass // max(1, len(x)))
        logits = []
        for start in range(0, self.passes, per_chunk):
            k = min(per_chunk, self.passes - start)
            logits.append(self.net(x.repeat(k, *([1] * (x.ndim - 1)))).view(k, len(x), -1))
        return mean_softmax_scores(torch.cat(logits))


class FixedDraws(nn.Module):
    """A deterministic model: the mean softmax of k fixed draws (k = 1: that one sampled model's logits)."""

    def __init__(self, net: nn.Module, seeds: list[int]):
        super().__init__()
        self.net, self.seeds = net, tuple(seeds)
        self.layers = tuple(random_layers(net))  # a tuple: not submodules of this wrapper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.seeds)
        for layer in self.layers:
            layer.fixed = (self.seeds, len(x))
        try:
            logits = self.net(x.repeat(k, *([1] * (x.ndim - 1))))
        finally:
            for layer in self.layers:
                layer.fixed = None
        return logits if k == 1 else mean_softmax_scores(logits.view(k, len(x), -1))


class RandomizedClassifier(ClassifierDefense):
    """A classifier whose ``model`` contains random layers; subclasses build it in ``build_model``."""

    stochastic = True
    draw_seeds: list[int] = []  # set by setup

    def set_passes(self, passes: int, name: str) -> None:
        """The number of fresh draws a prediction averages (an ``__init__`` parameter ``name``)."""
        if passes < 1:
            raise ValueError(f"{name} must be >= 1, got {passes}")
        self.forward_passes = passes

    def build_model(self, arch: str, spec: InputSpec, seed: int) -> nn.Module:
        raise NotImplementedError

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        self.spec, self.device = spec, device
        arch = default_architecture(spec) if self.arch == "auto" else self.arch
        self.model = _number_layers(self.build_model(arch, spec, seed)).to(device).eval()
        if not random_layers(self.model):
            raise ValueError(f"{type(self).__name__}: architecture {arch!r} has no layer to randomize")
        # The fixed draws of the fixed:<k> surfaces and of the diversity members, from the training seed.
        count = max(*FIXED_DRAW_COUNTS, self.forward_passes)
        self.draw_seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence([seed, 7]).spawn(count)]

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        # The random layers draw from the global generator: seed it, and leave the caller's stream as it was.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            super().fit(data, seed=seed, progress=progress)

    def deployed(self) -> nn.Module:
        return SelfEnsemble(self.model, self.forward_passes).eval()

    def member_models(self) -> list[nn.Module]:
        """The ``passes`` fixed draws the interrater agreement κ is computed over."""
        return [FixedDraws(self.model, [s]).eval() for s in self.draw_seeds[:self.forward_passes]]

    def surface_names(self) -> list[str]:
        return ["deployed", "single", *(f"fixed:{k}" for k in FIXED_DRAW_COUNTS),
                *(f"ensemble:{k}" for k in ENSEMBLE_SIZES)]

    def surfaces(self) -> dict[str, nn.Module]:
        return {"deployed": self.deployed(), "single": self.model,
                **{f"fixed:{k}": FixedDraws(self.model, self.draw_seeds[:k]).eval() for k in FIXED_DRAW_COUNTS},
                **{f"ensemble:{k}": SelfEnsemble(self.model, k).eval() for k in ENSEMBLE_SIZES}}


# --------------------------------------------------------------------------- the two defenses


@defenses.register("rse", version="1")
class RandomSelfEnsemble(RandomizedClassifier):
    """Random Self-Ensemble (Liu et al. 2018): Gaussian noise before every convolution, in training and at
    test time; the prediction averages the softmax of ``ensemble_size`` noisy passes (paper: 50; accuracy
    saturates near 10, Fig. 5).

    ``init_noise`` is added to the input image, ``inner_noise`` before every other convolution. Noise
    levels and pixel range: the paper's inputs are in [-1, 1] and its Table 1 uses init 0.4 / inner 0.1
    for VGG-16 (CIFAR-10, STL-10) and 0.1 / 0.1 for ResNeXt (Sec. 4.1 ties them to that input range). Our
    images are in [0, 1], half that range, so the init noise is added in [0, 1] pixel space (before the
    model's own normalization, if it has one) at half the paper's value: the default 0.2 is the paper's
    0.4, and its 0.1 is 0.05 here. The inner noise acts on feature maps, which have no fixed range: 0.1,
    as the paper. Works on any registered architecture with convolutions.
    """

    def __init__(self, *, init_noise: float = 0.2, inner_noise: float = 0.1, ensemble_size: int = 50,
                 **classifier_params: Any):
        super().__init__(**classifier_params)
        self.set_passes(ensemble_size, "ensemble_size")
        if not (init_noise >= 0 and inner_noise >= 0):
            raise ValueError(f"noise levels must be >= 0, got init_noise={init_noise}, inner_noise={inner_noise}")
        self.init_noise, self.inner_noise, self.ensemble_size = init_noise, inner_noise, ensemble_size

    def build_model(self, arch: str, spec: InputSpec, seed: int) -> nn.Module:
        torch.manual_seed(seed)  # parameter initialisation
        net = build_architecture(arch, spec, self.arch_params)
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"rse: architecture {arch!r} has no convolution to put noise before")
        first = convs[0]
        # Inner noise before every convolution but the first, whose noise is on the input instead.
        _replace(net, lambda path, m: nn.Sequential(NoiseLayer(self.inner_noise), m)
                 if isinstance(m, nn.Conv2d) and m is not first else None)
        return nn.Sequential(NoiseLayer(self.init_noise), net)


# The layers a sampled model draws from a sub-model: those with weights (Lee et al. sample convolutions and,
# in their VGG/ResNet, every layer; a batch norm's statistics belong to the weights it follows).
_SAMPLED_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


@defenses.register("random-layer-sampling", version="1")
class RandomLayerSampling(RandomizedClassifier):
    """Random layer sampling with group optimisation (Lee et al. 2021).

    ``sub_models`` (M) copies of one architecture, each initialised from its own seed. Every forward pass
    picks each layer's weights from one sub-model, categorically with ``layer_probs`` (equal by default):
    M^L sampled models from M sets of weights. Training samples ``train_samples`` (K) models per step and
    minimises the cross-entropy of their mean prediction (Sec. 3.2, the group optimisation; M = 2, K = 3 in
    the paper). The prediction averages ``test_samples`` (N) sampled models (paper: N = 10).
    """

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """K sampled models per training step (group optimisation)."""
        return float(params.get("train_samples") or 1)

    def __init__(self, *, sub_models: int = 2, train_samples: int = 3, test_samples: int = 10,
                 layer_probs: list[float] | None = None, **classifier_params: Any):
        super().__init__(**classifier_params)
        self.set_passes(test_samples, "test_samples")
        if sub_models < 2 or train_samples < 1:
            raise ValueError(f"sub_models must be >= 2 and train_samples >= 1, got {sub_models} and {train_samples}")
        if layer_probs is not None and (len(layer_probs) != sub_models or min(layer_probs) < 0
                                        or not math.isclose(sum(layer_probs), 1.0, abs_tol=1e-6)):
            raise ValueError(f"layer_probs must be {sub_models} non-negative numbers summing to 1, got {layer_probs}")
        self.sub_models, self.train_samples, self.test_samples = sub_models, train_samples, test_samples
        self.layer_probs = layer_probs

    def build_model(self, arch: str, spec: InputSpec, seed: int) -> nn.Module:
        copies = []
        for child in np.random.SeedSequence([seed, 1]).spawn(self.sub_models):
            torch.manual_seed(int(child.generate_state(1)[0]))  # each sub-model its own initialisation
            copies.append(build_architecture(arch, spec, self.arch_params))
        probs = torch.tensor(self.layer_probs or [1.0 / self.sub_models] * self.sub_models)
        others = [dict(c.named_modules()) for c in copies[1:]]
        net = copies[0]
        _replace(net, lambda path, m: SampledLayer([m, *(o[path] for o in others)], probs)
                 if isinstance(m, _SAMPLED_TYPES) else None)
        return net

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the mean prediction of K sampled models (one batched forward of K x B rows)."""
        k = self.train_samples
        logits = model(x.repeat(k, *([1] * (x.ndim - 1)))).view(k, len(x), -1)
        return F.nll_loss(mean_softmax_scores(logits), y)
