"""Ensembles as a defense (Strauss et al. 2017, Sec. 3; combinations with other defenses, Sec. 4.3).

Four ways to make the members diverse (Sec. 3; random initialization is used in all of them):

(i)   ``random-init``: same architecture, member i initialised and trained from its own seed;
(ii)  ``mixed-arch``: similar architectures: member i has ``extra_filters = 4·⌊i/2⌋`` and, for odd i,
      an extra convolution layer (``strauss-mnist``); ``strauss-cifar`` has no extra-conv variant,
      so there member i has ``extra_filters = 4·i``. Every member of a 10-model ensemble thus has its
      own architecture, each a few filters or one layer away from the paper's net;
(iii) ``bagging``: member i is trained on its own bootstrap replicate (m draws with replacement);
(iv)  ``gauss-noise``: members trained on images plus fresh N(0, noise_std²) noise per batch
      (the ``gaussian-augment`` defense as member).

Members are ordinary registered classifier defenses (``member_defense``), which gives the paper's
"Bagging + Adv. Train." and "Bagging + Def. Dist." (Table 4). ``members`` is a count, or a list with one
mapping per member of parameters laid over the shared ``member_params`` (e.g. each member's ``eps``).

Models you already have: ``member_defense: pretrained`` (defenses/pretrained.py) loads each member instead
of training it, e.g. ``member_params: {factory: ...}`` with ``members: [{weights: a.pt}, {weights: b.pt}]``.
No training method or training parameter applies to them (setting one is an error). Each weights file's
SHA-256 enters the task key (``Ensemble.resolve_params``), so changing one member's file re-runs the ensemble.

The ensemble predicts the label maximizing the mean of the members' softmax outputs (Sec. 3).
Attack surfaces: ``deployed`` (the log of that mean: its cross-entropy is the ensemble's own loss,
i.e. the adaptive attack), ``member:<i>`` (Grad. 1: one member's gradient) and ``mean-gradient``
(Grad. 2: the average of the members' loss gradients, through ``attack_loss``).

Batched members: where all members share one architecture (random-init, bagging, gauss-noise; not
mixed-arch), ``MeanSoftmax(..., batched=True)`` evaluates them in one call, ``torch.vmap`` over
``torch.func.functional_call`` with the members' parameters stacked along a leading axis, instead of a
Python loop. Same outputs and input gradients as the loop (to float rounding). It is off by default
(``Ensemble.batched_members``): on CPU (2 cores, batch 256, Strauss MNIST net, 3-10 members) it measured
0.3-0.6x the loop's throughput, forward and input gradient alike (``advbench bench ensembles``). vmap's
convolution rule turns the members into one grouped convolution plus a separate bias add, which is slower
there than the members' own convolutions, and the following ReLU/pooling run on a permuted layout; the
loop's per-member work at batch 256 already keeps the cores busy.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from bench.data import DatasetSplits
from bench.defense import ClassifierDefense, Defense, default_architecture, defense_class_flag
from bench.models import InputSpec
from bench.registry import defenses
from defenses.pretrained import Pretrained, nested_defense

# The members' training parameters default as for a single classifier, so an ensemble and
# its single-model baseline differ only in what a suite sets.
_CLASSIFIER = ClassifierDefense.__init__.__kwdefaults__
_MIXED_ARCHS = ("strauss-mnist", "strauss-cifar")


def same_architecture(members: list[nn.Module]) -> bool:
    """Whether the members are one architecture (module tree, parameter and buffer names, shapes, dtypes,
    devices), so that their stacked parameters can run through one of them."""
    def signature(m: nn.Module):
        return (type(m), repr(m), [(n, t.shape, t.dtype, t.device) for n, t in m.named_parameters()],
                [(n, t.shape, t.dtype, t.device) for n, t in m.named_buffers()])

    first = signature(members[0])
    return all(signature(m) == first for m in members[1:])


def _call_skeleton(skeleton: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return functional_call(skeleton, state, (x,))


class MeanSoftmax(nn.Module):
    """log(mean_i softmax(member_i(x))): scores whose argmax is the ensemble's vote.

    ``batched``: evaluate the members in one ``torch.vmap`` call where they share an architecture
    (``self.batched`` says whether it is in use); otherwise, or in training mode (dropout would need
    per-member randomness), a Python loop over the members.
    """

    def __init__(self, members: list[nn.Module], *, batched: bool = False):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.batched = batched and len(members) > 1 and same_architecture(members)
        # Member 0's module tree without its tensors (on the meta device), called with the stacked state.
        # Built on first use, and kept in a tuple so it is no submodule: not in state_dict, not moved by
        # .to(), and always in eval mode.
        self._skeleton: tuple[nn.Module] | None = None

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, shaped (members, N, classes)."""
        # The members' mode decides (a fresh wrapper is in training mode; .train()/.eval() reach the members).
        if self.batched and not any(m.training for m in self.members):
            return self._batched_logits(x)
        return torch.stack([m(x) for m in self.members])

    def _batched_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self._skeleton is None:
            self._skeleton = (copy.deepcopy(self.members[0]).to("meta").eval(),)
        # Stacked from the live parameters on every call (about 1.4 ms for 10 Strauss MNIST members,
        # ~0.1% of their forward pass at batch 256): stays right after load_state_dict or further training,
        # and differentiable, as the loop is. (torch.func.stack_module_state makes detached copies.)
        states = [{**dict(m.named_parameters()), **dict(m.named_buffers())} for m in self.members]
        stacked = {name: torch.stack([state[name] for state in states]) for name in states[0]}
        return torch.vmap(functools.partial(_call_skeleton, self._skeleton[0]), in_dims=(0, None))(stacked, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logsumexp of log-softmaxes stays finite where a plain mean of softmaxes would underflow to log(0).
        log_probs = F.log_softmax(self.member_logits(x), dim=2)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


class MeanGradient(MeanSoftmax):
    """Grad. 2: scores as the deployed ensemble, but the attack loss is the members' mean loss.

    ∇ₓ of ``attack_loss`` is (1/n) Σ_i ∇ₓ J(θ_i, x, y), the average member gradient.
    Attack backends that only see ``forward`` (Foolbox, ART) attack the deployed scores instead.
    """

    def attack_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over members of each member's cross-entropy summed over the batch."""
        logits = self.member_logits(x)
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)), reduction="sum") / len(logits)


@defenses.register("ensemble", version="1")
class Ensemble(Defense):
    """Ensemble of classifiers voting by mean softmax: random init, mixed architectures, bagging or Gaussian noise."""

    @classmethod
    def training_factor(cls, params: dict[str, Any]) -> float:
        """Every member trains as its member defense would (the cost model counts every member's FLOPs)."""
        member = "gaussian-augment" if params.get("method") == "gauss-noise" else params.get("member_defense")
        factory = defenses.get(member or "undefended").factory
        return float(defense_class_flag(factory, "training_factor")(params.get("member_params") or {}))

    # Evaluate same-architecture members in one vmap call (MeanSoftmax) rather than a loop. An execution
    # choice, not a suite parameter: it does not change results, so it must not change task keys. Off by
    # default: slower than the loop on CPU (``advbench bench ensembles``); set it on an instance to use it.
    batched_members: bool = False

    def __init__(self, *, method: Literal["random-init", "mixed-arch", "bagging", "gauss-noise"] = "random-init",
                 members: int | list[dict[str, Any]] = 10, noise_std: float = 0.1,
                 member_defense: Literal["undefended", "adv-training", "distillation", "pretrained"] = "undefended",
                 member_params: dict[str, Any] | None = None,
                 arch: str = _CLASSIFIER["arch"], arch_params: dict[str, Any] | None = _CLASSIFIER["arch_params"],
                 epochs: int = _CLASSIFIER["epochs"], batch_size: int = _CLASSIFIER["batch_size"],
                 lr: float = _CLASSIFIER["lr"], optimizer: Literal["adam", "sgd"] = _CLASSIFIER["optimizer"],
                 weight_decay: float = _CLASSIFIER["weight_decay"],
                 lr_schedule: Literal["constant", "cosine"] = _CLASSIFIER["lr_schedule"],
                 crop_flip: bool = _CLASSIFIER["crop_flip"]):
        # ``members``: a count, or one mapping per member of parameters laid over ``member_params``.
        per_member = [dict(m) for m in members] if isinstance(members, list) else None
        count = len(per_member) if per_member is not None else members
        if count < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        member_params = dict(member_params or {})
        training = dict(arch=arch, arch_params=arch_params, epochs=epochs, batch_size=batch_size, lr=lr,
                        optimizer=optimizer, weight_decay=weight_decay, lr_schedule=lr_schedule, crop_flip=crop_flip)
        if member_defense == "pretrained":
            self._check_pretrained(method, training, member_params, per_member)
        for where, params in [("member_params", member_params),
                              *((f"members[{i}]", m) for i, m in enumerate(per_member or []))]:
            clash = sorted(set(params) & set(_CLASSIFIER))
            if clash and member_defense != "pretrained":  # pretrained: the member refuses them itself
                raise ValueError(f"{where}: set {', '.join(clash)} on the ensemble itself (it trains every member)")
        if method == "gauss-noise" and (member_defense != "undefended" or member_params or any(per_member or [])):
            given = member_params if not per_member else {**member_params, "members": per_member}
            raise ValueError(f"method gauss-noise trains 'gaussian-augment' members with std = noise_std; it takes "
                             f"no member_defense ({member_defense!r}) or member_params ({given})")
        if method == "mixed-arch" and arch not in ("auto", *_MIXED_ARCHS):
            raise ValueError(f"method mixed-arch varies {' or '.join(_MIXED_ARCHS)}; got arch {arch!r}")
        self.method, self.members, self.noise_std = method, count, noise_std
        self.member_defense = "gaussian-augment" if method == "gauss-noise" else member_defense
        self.member_params = {**member_params, **({"std": noise_std} if method == "gauss-noise" else {})}
        self.per_member_params = per_member  # None: every member from member_params alone
        self.training_params = {**training, "arch_params": arch_params or {}}
        self.forward_passes = count  # one per member and prediction
        # Fail at suite validation on bad member parameters, not mid-run (each member, where they differ).
        for i in range(count if per_member is not None else 1):
            self._build_member(i, self.training_params)
        self.member_defenses: list[Defense] = []  # built by setup
        self.bootstrap_indices: list[torch.Tensor] = []  # bagging: member i's training rows, set by fit

    @staticmethod
    def _check_pretrained(method: str, training: dict[str, Any], member_params: dict[str, Any],
                          per_member: list[dict[str, Any]] | None) -> None:
        """Pretrained members are loaded, not trained: no training method and no training parameters apply."""
        if method != "random-init":
            raise ValueError(f"method {method!r} trains the members; pretrained members are loaded, not trained "
                             f"(leave method at random-init)")
        set_here = [k for k, v in training.items() if v != _CLASSIFIER[k]]
        if set_here:
            raise ValueError(f"{', '.join(set_here)}: training parameters; pretrained members are loaded, not "
                             f"trained (a member's own parameters go in member_params or members)")
        if "weights_sha256" in member_params and any("weights" in m and "weights_sha256" not in m
                                                     for m in per_member or []):
            raise ValueError("member_params.weights_sha256 pins one file, but members name their own weights: pin "
                             "each in its members entry")

    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters a task key hashes (``bench.plan``): for pretrained members, each weights file's
        SHA-256 pinned in beside it (``Pretrained.resolve_params``), in ``member_params`` for a file every
        member shares and in a member's ``members`` entry for its own, so changing one file changes the keys."""
        if params.get("member_defense") != "pretrained":
            return params
        resolved = {**params, "member_params": Pretrained.resolve_params(dict(params.get("member_params") or {}))}
        if isinstance(params.get("members"), list):
            resolved["members"] = [Pretrained.resolve_params(dict(m)) for m in params["members"]]
        return resolved

    # -- members

    def _member_where(self, i: int) -> str:
        return f"members[{i}]" if self.per_member_params is not None else f"{self.member_defense} members"

    def _build_member(self, i: int, training: dict[str, Any]) -> Defense:
        """Member i: ``member_params`` with its ``members`` entry laid over them, plus the ensemble's training
        parameters unless it is pretrained."""
        params = {**self.member_params, **(self.per_member_params[i] if self.per_member_params is not None else {})}
        if self.member_defense != "pretrained":
            params = {**training, **params}
        try:
            return nested_defense(self.member_defense, params, set_outside=tuple(_CLASSIFIER))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{self._member_where(i)}: {e}") from e

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Pretrained members: each must take the dataset's images (``Pretrained.check_input_shape``, called at
        suite validation); trained members are built for them."""
        if self.member_defense != "pretrained":
            return
        for i in range(self.members if self.per_member_params is not None else 1):
            member = self._build_member(i, {})
            try:
                member.check_input_shape(shape)
            except ValueError as e:
                raise ValueError(f"{self._member_where(i)}: {e}") from e

    def _architecture_variant(self, i: int, arch: str) -> dict[str, Any]:
        """Member i's extra architecture parameters (module docstring, method ii)."""
        if self.method != "mixed-arch":
            return {}
        if arch == "strauss-mnist":
            return {"extra_filters": 4 * (i // 2), "extra_conv": i % 2 == 1}
        return {"extra_filters": 4 * i}

    @staticmethod
    def _member_seeds(seed: int, n: int) -> list[tuple[int, int]]:
        """Per member: (init and training seed, bootstrap seed), independent streams derived from ``seed``."""
        return [tuple(int(s) for s in child.generate_state(2)) for child in np.random.SeedSequence(seed).spawn(n)]

    def setup(self, spec: InputSpec, *, seed: int, device: torch.device) -> None:
        self.spec, self.device = spec, device
        arch = default_architecture(spec) if self.training_params["arch"] == "auto" else self.training_params["arch"]
        self.member_defenses = []
        for i, (member_seed, _) in enumerate(self._member_seeds(seed, self.members)):
            arch_params = {**self.training_params["arch_params"], **self._architecture_variant(i, arch)}
            member = self._build_member(i, {**self.training_params, "arch": arch, "arch_params": arch_params})
            member.setup(spec, seed=member_seed, device=device)
            self.member_defenses.append(member)

    def fit(self, data: DatasetSplits, *, seed: int, progress: bool = True) -> None:
        self.bootstrap_indices = []
        bar = tqdm(total=self.members, desc=f"{self.label or 'ensemble'} ({self.method})", disable=not progress)
        for i, (member, (member_seed, bootstrap_seed)) in enumerate(
                zip(self.member_defenses, self._member_seeds(seed, self.members))):
            bar.set_description(f"member {i + 1}/{self.members}")
            member_data = data
            if self.method == "bagging":  # a bootstrap replicate: m draws with replacement from the m rows
                m = len(data.train_y)
                idx = torch.randint(0, m, (m,), generator=torch.Generator().manual_seed(bootstrap_seed))
                self.bootstrap_indices.append(idx)
                member_data = dataclasses.replace(data, train_x=data.train_x[idx], train_y=data.train_y[idx])
            member.fit(member_data, seed=member_seed, progress=progress)
            bar.update(1)
        bar.close()

    # -- what the harness uses

    def member_models(self) -> list[nn.Module]:
        return [member.deployed().eval() for member in self.member_defenses]

    def modules(self) -> dict[str, nn.Module]:
        # Every member is a single classifier: its deployed model is all of its state.
        return {f"member{i}": model for i, model in enumerate(self.member_models())}

    def deployed(self) -> nn.Module:
        return MeanSoftmax(self.member_models(), batched=self.batched_members).eval()

    def surface_names(self) -> list[str]:
        return ["deployed", *(f"member:{i}" for i in range(self.members)), "mean-gradient"]

    def loss_surface_names(self) -> list[str]:
        return ["mean-gradient"]

    def surfaces(self) -> dict[str, nn.Module]:
        models = self.member_models()
        return {"deployed": self.deployed(), **{f"member:{i}": m for i, m in enumerate(models)},
                "mean-gradient": MeanGradient(models, batched=self.batched_members).eval()}
