"""Deterministic certificates: interval bound propagation (IBP) and DeepZ zonotopes through a network.

For a classifier ``model`` (``[0, 1]`` NCHW images -> logits), an image ``x`` of label ``y`` and a budget ε, both
methods bound below, for every class j, the margin ``z_y(x') - z_j(x')`` over every ``x'`` in the ε ball around
``x`` (L∞ or L2) intersected with ``[0, 1]^d``. An example is *certified* where every such bound (j ≠ y) is
positive: no input of the ball changes its decision. Certified accuracy (``certify_bounds``) is a lower bound on
robust accuracy, the other side of an attack's upper bound.

* **IBP** (Gowal et al. 2018, "On the effectiveness of interval bound propagation for training verifiably robust
  models"): a box (center ``c``, radius ``r``) per layer. Affine layers: ``W·c + b``, ``|W|·r`` (Linear, Conv2d,
  AvgPool2d, AdaptiveAvgPool2d, BatchNorm in eval mode, ``bench.models.Normalize``); monotone layers take the
  box's ends (ReLU, LeakyReLU with a slope >= 0, ReLU6/Hardtanh, ELU, Softplus, Tanh, Sigmoid, MaxPool2d,
  AdaptiveMaxPool2d); Flatten reshapes; Dropout and Identity pass the box on (eval mode).
* **DeepZ** (Singh et al. 2018, "Fast and effective robustness certification"): a zonotope (center + one
  generator per input pixel) through affine layers exactly, ReLU by the minimal-area parallelogram
  (λ = u / (u - l), μ = -λl/2 and a new generator μ per unstable neuron). Layers: Linear, Conv2d, ReLU, Flatten,
  Normalize, BatchNorm (eval), AvgPool2d, AdaptiveAvgPool2d, Dropout, Identity. No rule for max-pooling or the
  other non-linear activations (``Unsupported``). A box is carried beside the zonotope (the reduced product of
  the two domains): each ReLU's ``l, u`` are the tighter of the zonotope's and the box's, and an example's margin
  bound is the larger of the zonotope's and IBP's; both are sound, so DeepZ here is never looser than IBP.
  Its size limit: a network whose worst-case zonotope (every ReLU unstable) needs more than
  ``DEEPZ_MAX_BYTES`` (512 MiB: generators × neurons × 4 bytes, two layers' worth) for one image is
  ``Unsupported``; images go through in chunks that fit that budget.

Both fold the network's last linear layer into the specification (Gowal et al.): the margins are computed through
``W_y - W_j`` and ``b_y - b_j`` from the box (or zonotope) at that layer's input, tighter than subtracting two
logits' bounds. The input set: L∞, the box ``[max(x - ε, 0), min(x + ε, 1)]``. L2: through the leading
per-element affine layers (Normalize, BatchNorm) and reshapes, the first Linear or Conv2d gets
``W·x ± ε·‖W_i ⊙ s‖₂`` per output unit (``s`` those layers' per-pixel scales, 1/std for Normalize; for a conv,
per output position from the squared kernel over the pixels it covers, so zero padding costs nothing); that box
is sound without ``[0, 1]^d`` and is intersected with the L∞ box's bounds (the L2 ball lies in the L∞ ball of the
same radius), which uses it. A network whose first layer is not affine (or a conv padding other than zeros) gets
the L∞ box of radius ε: sound, looser. DeepZ on L2 starts its zonotope from that first affine layer's box (one
generator per unit).

Networks are nested ``nn.Sequential``s walked in forward order; any other module with children (a ResNet's
blocks, a custom container with its own forward) is ``Unsupported``, and so is a known layer type whose
``forward`` a subclass overrides. BatchNorm and Dropout are always taken as in eval mode (running statistics, no
dropout): the bounds are the deployed network's, also in training (``worst_case_logits``).

Soundness: every rule is a true bound in exact arithmetic. In float32, ``SLACK`` · (1 + the sum of the absolute
terms of the last layer's margin) is subtracted from each margin bound (about 1e-5 relative): it covers the
rounding of a network's own forward pass on the way (~1e-6 relative), not a proof against adversarial rounding.

Checked against ART 1.20 (``art.estimators.certification``): on a ReLU MLP our IBP logit bounds equal
``PyTorchIBPClassifier.predict_intervals``' (and the elided margins are at least as tight as ART's
``lower_y - upper_j``), and our zonotope's margins equal those of ``PytorchDeepZ`` (tests/test_bounds.py).
ART's are not wrapped: they take Conv2d, Linear and ReLU only (no Flatten, pooling, normalization), infer one
reshape, and handle one image at a time in NumPy for DeepZ.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Normalize
from . import Unsupported

Method = Literal["ibp", "deepz"]
Norm = Literal["linf", "l2"]

DEEPZ_MAX_BYTES = 512 * 2**20  # DeepZ's memory for one image's zonotope, worst case (every ReLU unstable)
SLACK = 1e-5                   # float32 safety margin, relative to the last layer's absolute terms

# Layer kinds, each matched by class and by that class's own forward (a subclass overriding it is not matched).
_KINDS: tuple[tuple[str, tuple[type[nn.Module], ...]], ...] = (
    ("linear", (nn.Linear,)),
    ("conv", (nn.Conv2d,)),
    ("batchnorm", (nn.BatchNorm1d, nn.BatchNorm2d)),
    ("normalize", (Normalize,)),
    ("flatten", (nn.Flatten,)),
    ("identity", (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout)),
    ("avgpool", (nn.AvgPool2d, nn.AdaptiveAvgPool2d)),
    ("relu", (nn.ReLU,)),
    ("monotone", (nn.LeakyReLU, nn.Hardtanh, nn.ELU, nn.Softplus, nn.Tanh, nn.Sigmoid)),
    ("maxpool", (nn.MaxPool2d, nn.AdaptiveMaxPool2d)),
)
_RULES: dict[str, frozenset[str]] = {
    "ibp": frozenset(kind for kind, _ in _KINDS),
    "deepz": frozenset({"linear", "conv", "batchnorm", "normalize", "flatten", "identity", "avgpool", "relu"}),
}
_SUPPORTED_TEXT = {
    "ibp": "Linear, Conv2d, ReLU, LeakyReLU, ReLU6/Hardtanh, ELU, Softplus, Tanh, Sigmoid, MaxPool2d, AvgPool2d, "
           "adaptive pools, BatchNorm (eval), Normalize, Flatten, Dropout, Identity",
    "deepz": "Linear, Conv2d, ReLU, AvgPool2d, AdaptiveAvgPool2d, BatchNorm (eval), Normalize, Flatten, Dropout, "
             "Identity",
}
_PREFIX = frozenset({"batchnorm", "normalize", "flatten", "identity"})  # per-element affine maps and reshapes


def _kind(layer: nn.Module) -> str | None:
    for kind, classes in _KINDS:
        for cls in classes:
            if isinstance(layer, cls) and type(layer).forward is cls.forward:
                return kind
    return None


@dataclass(frozen=True)
class _Net:
    """A network as the bound rules see it: its layers in forward order, with their kinds; ``head`` is the last
    one's index where it is a Linear the margins elide (only Dropout/Identity after it), else None."""

    layers: tuple[nn.Module, ...]
    kinds: tuple[str, ...]
    head: int | None

    @property
    def body_end(self) -> int:
        """Where the layers before the elided head end (all of them without one)."""
        return len(self.layers) if self.head is None else self.head


def _where(name: str) -> str:
    return f"layer {name!r}" if name else "the model"


def _network(model: nn.Module, method: str) -> _Net:
    """``model``'s layers in forward order; Unsupported (with the reason) where ``method`` has no rule for one."""
    if method not in _RULES:
        raise ValueError(f"method must be 'ibp' or 'deepz', got {method!r}")
    layers: list[nn.Module] = []
    kinds: list[str] = []

    def walk(module: nn.Module, name: str) -> None:
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            for child_name, child in module.named_children():
                walk(child, f"{name}.{child_name}" if name else child_name)
            return
        kind = _kind(module)
        what = type(module).__name__
        if kind is None and any(True for _ in module.children()):
            raise Unsupported(f"{method}: {_where(name)} ({what}) is a container with its own forward (skip "
                              "connections, branches): only nn.Sequential is walked")
        if kind is None:
            raise Unsupported(f"{method}: {_where(name)} ({what}) has no {_domain(method)} rule here; supported: "
                              f"{_SUPPORTED_TEXT[method]}")
        if kind not in _RULES[method]:
            raise Unsupported(f"{method}: {what} has no zonotope rule here ({_where(name)}; only ReLU of the "
                              "non-linear layers): ibp takes it")
        problem = _layer_problem(module, kind)
        if problem:
            raise Unsupported(f"{method}: {_where(name)} ({what}): {problem}")
        layers.append(module)
        kinds.append(kind)

    walk(model, "")
    end = len(kinds)
    while end > 0 and kinds[end - 1] == "identity":
        end -= 1
    head = end - 1 if end > 0 and kinds[end - 1] == "linear" else None
    return _Net(tuple(layers), tuple(kinds), head)


def _domain(method: str) -> str:
    return "interval" if method == "ibp" else "zonotope"


def _layer_problem(layer: nn.Module, kind: str) -> str | None:
    """Why a layer of a known kind still has no sound rule (a non-monotone setting, batch statistics)."""
    if kind == "batchnorm" and (layer.running_mean is None or layer.running_var is None):
        return "no running statistics (track_running_stats=False): it normalizes by each batch's, no fixed map"
    if isinstance(layer, nn.LeakyReLU) and layer.negative_slope < 0:
        return f"negative_slope {layer.negative_slope} < 0 is not monotone"
    if isinstance(layer, nn.ELU) and layer.alpha < 0:
        return f"alpha {layer.alpha} < 0 is not monotone"
    if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
        return "return_indices=True returns a tuple"
    if isinstance(layer, nn.AdaptiveMaxPool2d) and layer.return_indices:
        return "return_indices=True returns a tuple"
    return None


# --------------------------------------------------------------------------- the support check and sizes


def _shapes(net: _Net, input_shape: tuple[int, ...], device: torch.device) -> list[tuple[int, int]]:
    """Each layer's input and output sizes (elements per image), from a forward pass of one zero image."""
    sizes = []
    with torch.no_grad(), _eval_mode(net.layers):
        h = torch.zeros(1, *input_shape, device=device)
        for layer in net.layers:
            out = layer(h)
            sizes.append((h[0].numel(), out[0].numel()))
            h = out
    if h.dim() != 2:
        raise Unsupported(f"the network's output has shape {tuple(h.shape[1:])} per image, not a vector of logits")
    return sizes


def _deepz_bytes(net: _Net, sizes: list[tuple[int, int]], norm: str) -> int:
    """DeepZ's peak memory for one image, worst case: (generators + 1) × (a layer's inputs + outputs) × 4 bytes,
    every ReLU adding one generator per neuron. L∞ starts with one generator per pixel; L2 with one per output
    unit of the first affine layer (after the leading Normalize/BatchNorm/reshapes), where it has one."""
    start, generators = 0, sizes[0][0] if sizes else 0
    if norm == "l2":
        i = 0
        while i < net.body_end and net.kinds[i] in _PREFIX:
            i += 1
        if i < net.body_end and net.kinds[i] in ("linear", "conv"):
            start, generators = i + 1, sizes[i][1]
    peak = 0
    for (n_in, n_out), kind in zip(sizes[start:net.body_end], net.kinds[start:net.body_end]):
        peak = max(peak, (generators + 1) * (n_in + n_out) * 4)
        if kind == "relu":
            generators += n_in
    return peak


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_supported(model: nn.Module, method: Method, input_shape: tuple[int, ...]) -> None:
    """Raise Unsupported(reason) where ``method`` cannot take ``model`` (a layer type it has no rule for; a network
    beyond its size limit)."""
    net = _network(model, method)
    try:
        sizes = _shapes(net, tuple(input_shape), _device_of(model))
    except Unsupported:
        raise
    except Exception as e:  # a network that does not take these images
        shape = "x".join(map(str, input_shape))
        raise Unsupported(f"{method}: the network does not take {shape} images ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if method == "deepz":
        need = max(_deepz_bytes(net, sizes, "linf"), _deepz_bytes(net, sizes, "l2"))
        if need > DEEPZ_MAX_BYTES:
            raise Unsupported(f"deepz: the zonotope needs up to {need / 2**20:,.0f} MiB per image (generators × "
                              f"neurons × 4 bytes, every ReLU unstable), over its {DEEPZ_MAX_BYTES // 2**20} MiB "
                              "limit: use ibp")


# --------------------------------------------------------------------------- per-layer rules


def _batchnorm_affine(layer: nn.Module, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``scale · h + shift``, shaped to broadcast over an (N, C, ...) tensor of ``ndim``."""
    assert isinstance(layer, nn.modules.batchnorm._BatchNorm)
    assert layer.running_mean is not None and layer.running_var is not None
    scale = torch.rsqrt(layer.running_var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    shift = -layer.running_mean * scale
    if layer.bias is not None:
        shift = shift + layer.bias
    view = (1, -1) + (1,) * (ndim - 2)
    return scale.view(view), shift.view(view)


def _affine(layer: nn.Module, kind: str, h: torch.Tensor, *, bias: bool = True) -> torch.Tensor:
    """An affine layer applied to ``h`` (with its offset or, ``bias=False``, its linear part only)."""
    if kind == "linear":
        assert isinstance(layer, nn.Linear)
        return F.linear(h, layer.weight, layer.bias if bias else None)
    if kind == "conv":
        assert isinstance(layer, nn.Conv2d)
        return layer._conv_forward(h, layer.weight, layer.bias if bias else None)
    if kind == "batchnorm":
        scale, shift = _batchnorm_affine(layer, h.dim())
        return h * scale + shift if bias else h * scale
    if kind == "normalize":
        mean, std = layer.get_buffer("mean"), layer.get_buffer("std")
        return (h - mean) / std if bias else h / std
    if kind in ("flatten", "avgpool"):
        return layer(h)
    assert kind == "identity"
    return h


def _abs_linear(layer: nn.Module, kind: str, r: torch.Tensor) -> torch.Tensor:
    """``|W|·r``: a box's radius through an affine layer."""
    if kind == "linear":
        assert isinstance(layer, nn.Linear)
        return F.linear(r, layer.weight.abs())
    if kind == "conv":
        assert isinstance(layer, nn.Conv2d)
        return layer._conv_forward(r, layer.weight.abs(), None)
    if kind == "batchnorm":
        return r * _batchnorm_affine(layer, r.dim())[0].abs()
    if kind == "normalize":
        return r / layer.get_buffer("std").abs()
    return _affine(layer, kind, r, bias=False)  # flatten, avgpool (non-negative weights), identity


def _ibp_layer(layer: nn.Module, kind: str, c: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A box (center, radius) through one layer."""
    if kind in ("relu", "monotone", "maxpool"):
        lo, hi = layer(c - r), layer(c + r)
        return (hi + lo) / 2, (hi - lo) / 2
    return _affine(layer, kind, c), _abs_linear(layer, kind, r)


def _linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    return (hi + lo) / 2, (hi - lo) / 2


@dataclass
class _Pending:
    """An L2 ball not yet through an affine layer: the image's exact activation and the per-element scales of
    the layers it went through (the ball is {c + s ⊙ δ : ‖δ‖₂ ≤ ε})."""

    center: torch.Tensor
    scale: torch.Tensor


def _scale_through(layer: nn.Module, kind: str, s: torch.Tensor) -> torch.Tensor:
    """The per-element scales (one image, no batch dimension) through a per-element affine layer or reshape."""
    if kind in ("batchnorm", "normalize"):
        return _abs_linear(layer, kind, s.unsqueeze(0))[0]
    if kind == "flatten":
        return layer(s.unsqueeze(0))[0]
    return s


def _l2_radius(layer: nn.Module, kind: str, s: torch.Tensor, eps: float) -> torch.Tensor:
    """ε·‖W_i ⊙ s‖₂ per output unit of a Linear or a zero-padded Conv2d (per output position: the squared
    kernel over the pixels it covers)."""
    sq = (s * s).unsqueeze(0)
    if kind == "linear":
        assert isinstance(layer, nn.Linear)
        total = F.linear(sq, layer.weight.square())
    else:
        assert isinstance(layer, nn.Conv2d)
        total = layer._conv_forward(sq, layer.weight.square(), None)
    return eps * total.clamp_min(1e-30).sqrt()


def _l2_start(net: _Net, x: torch.Tensor, eps: float) -> tuple[int, torch.Tensor, torch.Tensor, _Pending | None]:
    """The L2 ball through the leading per-element affine layers and the first Linear/Conv2d: (the index of the
    next layer, the box there, and, where the ball reached the elided head untouched, the ball itself)."""
    c, r = _linf_box(x, eps)  # the L2 ball lies in the L∞ ball of the same radius
    pending = _Pending(x, torch.ones_like(x[0]))
    i = 0
    while i < net.body_end and net.kinds[i] in _PREFIX:
        layer, kind = net.layers[i], net.kinds[i]
        c, r = _ibp_layer(layer, kind, c, r)
        pending = _Pending(_affine(layer, kind, pending.center), _scale_through(layer, kind, pending.scale))
        i += 1
    if i == net.body_end:
        at_head = net.head is not None and c.dim() == 2
        return i, c, r, pending if at_head else None
    layer, kind = net.layers[i], net.kinds[i]
    if kind == "linear" or (kind == "conv" and getattr(layer, "padding_mode", "zeros") == "zeros"):
        center, radius = _affine(layer, kind, pending.center), _l2_radius(layer, kind, pending.scale, eps)
        c, r = _ibp_layer(layer, kind, c, r)
        lo = torch.maximum(center - radius, c - r)
        hi = torch.minimum(center + radius, c + r)
        hi = torch.maximum(hi, lo)  # the two boxes meet (both hold the image's own activation); rounding aside
        return i + 1, (hi + lo) / 2, (hi - lo) / 2, None
    return i, c, r, None


def _specification(net: _Net, y: torch.Tensor, width: int, like: torch.Tensor,
                   elide: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The margins z_y - z_j as an affine map of the last layer's input (``elide``: the head folded in;
    else of the logits themselves): weights (B, K, N) and offsets (B, K)."""
    if elide:
        assert net.head is not None
        head = net.layers[net.head]
        assert isinstance(head, nn.Linear)
        w = head.weight
        weights = w[y].unsqueeze(1) - w.unsqueeze(0)
        if head.bias is None:
            return weights, torch.zeros(weights.shape[:2], dtype=like.dtype, device=like.device)
        return weights, head.bias[y].unsqueeze(1) - head.bias.unsqueeze(0)
    eye = torch.eye(width, dtype=like.dtype, device=like.device)
    weights = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    return weights, torch.zeros(weights.shape[:2], dtype=like.dtype, device=like.device)


def _zero_label_column(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    label = F.one_hot(y, margins.shape[1]).bool()
    return margins.masked_fill(label, 0.0)


def _box_margins(net: _Net, c: torch.Tensor, r: torch.Tensor, y: torch.Tensor, elide: bool,
                 pending: _Pending | None, eps: float, slack: bool) -> torch.Tensor:
    """Margin lower bounds from a box at the last layer's input (``elide``) or at the logits."""
    c, r = c.flatten(1), r.flatten(1)
    weights, offsets = _specification(net, y, c.shape[1], c, elide)
    magnitude = weights.abs()
    margins = torch.einsum("bkn,bn->bk", weights, c) + offsets - torch.einsum("bkn,bn->bk", magnitude, r)
    if pending is not None:  # the ball itself reaches the margins' map: ε·‖w ⊙ s‖₂ (sound without the [0, 1] box)
        center, s = pending.center.flatten(1), pending.scale.flatten()
        spread = torch.einsum("bkn,n->bk", weights.square(), s.square()).clamp_min(1e-30).sqrt()
        margins = torch.maximum(margins, torch.einsum("bkn,bn->bk", weights, center) + offsets - eps * spread)
    if slack:
        margins = margins - SLACK * (1 + torch.einsum("bkn,bn->bk", magnitude, c.abs() + r) + offsets.abs())
    return _zero_label_column(margins, y)


def _ibp_margins(net: _Net, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                 slack: bool) -> torch.Tensor:
    if norm == "linf":
        i, pending = 0, None
        c, r = _linf_box(x, eps)
    else:
        i, c, r, pending = _l2_start(net, x, eps)
    for layer, kind in zip(net.layers[i:net.body_end], net.kinds[i:net.body_end]):
        c, r = _ibp_layer(layer, kind, c, r)
    elide = net.head is not None and c.dim() == 2
    if net.head is not None and not elide:  # a Linear on a feature map: not folded into the margins
        for layer, kind in zip(net.layers[net.head:], net.kinds[net.head:]):
            c, r = _ibp_layer(layer, kind, c, r)
    return _box_margins(net, c, r, y, elide, pending, eps, slack)


# --------------------------------------------------------------------------- DeepZ


def _zonotope_relu(c: torch.Tensor, g: torch.Tensor, box_c: torch.Tensor,
                   box_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepZ's ReLU (Singh et al. 2018, Theorem 3.1) with ``l, u`` the tighter of the zonotope's and the box's
    bounds: exact on stable neurons; on an unstable one y = λx + μ + μ·ε_new, λ = u / (u - l), μ = -λl / 2 (a new
    generator per unstable neuron, packed: as many new generators as the batch's most unstable image needs)."""
    spread = g.abs().sum(1)
    lo = torch.maximum(c - spread, box_c - box_r)
    hi = torch.minimum(c + spread, box_c + box_r)
    hi = torch.maximum(hi, lo)
    positive, negative = lo >= 0, hi <= 0
    unstable = ~(positive | negative)
    lam = torch.where(unstable, hi / (hi - lo).clamp_min(1e-30), positive.to(c.dtype))
    mu = torch.where(unstable, -lam * lo / 2, torch.zeros_like(lo))
    batch, count = g.shape[:2]
    shape = c.shape[1:]
    c_new = lam * c + mu
    g_new = (lam.unsqueeze(1) * g).reshape(batch, count, -1)
    flat = unstable.reshape(batch, -1)
    added = int(flat.sum(1).max()) if batch else 0
    if added:
        order = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)[:, :added]  # unstable neurons first
        values = (mu.reshape(batch, -1) * flat).gather(1, order)
        extra = torch.zeros(batch, added, flat.shape[1], dtype=g.dtype, device=g.device)
        extra = extra.scatter(2, order.unsqueeze(2), values.unsqueeze(2))
        g_new = torch.cat([g_new, extra], dim=1)
    relu_lo, relu_hi = lo.clamp_min(0), hi.clamp_min(0)
    return c_new, g_new.reshape(batch, -1, *shape), (relu_hi + relu_lo) / 2, (relu_hi - relu_lo) / 2


def _zonotope_affine(layer: nn.Module, kind: str, c: torch.Tensor,
                     g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A zonotope through an affine layer, exactly: the center with the offset, the generators without."""
    batch, count = g.shape[:2]
    out = _affine(layer, kind, g.reshape(batch * count, *g.shape[2:]), bias=False)
    return _affine(layer, kind, c), out.reshape(batch, count, *out.shape[1:])


def _zonotope_margins(net: _Net, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                      product: bool = True) -> torch.Tensor:
    """DeepZ's margin bounds; ``product=False``: the zonotope's alone (no box beside it: Singh et al.'s DeepZ as
    ART implements it, for the comparison with ART)."""
    if norm == "linf":
        i = 0
        box_c, box_r = _linf_box(x, eps)
    else:
        i, box_c, box_r, pending = _l2_start(net, x, eps)
        if pending is not None:  # only per-element maps before the margins: the ball's own bound is exact there
            return _box_margins(net, box_c, box_r, y, True, pending, eps, slack=True)
    batch = len(x)
    c = box_c
    g = torch.diag_embed(box_r.flatten(1)).reshape(batch, -1, *box_c.shape[1:])
    end = net.body_end
    for layer, kind in zip(net.layers[i:end], net.kinds[i:end]):
        if kind == "relu":
            if not product:  # the zonotope's own bounds only
                box_c, box_r = c, g.abs().sum(1)
            c, g, box_c, box_r = _zonotope_relu(c, g, box_c, box_r)
        else:
            c, g = _zonotope_affine(layer, kind, c, g)
            box_c, box_r = _ibp_layer(layer, kind, box_c, box_r)
    elide = net.head is not None and c.dim() == 2
    if net.head is not None and not elide:
        for layer, kind in zip(net.layers[net.head:], net.kinds[net.head:]):
            c, g = _zonotope_affine(layer, kind, c, g)
            box_c, box_r = _ibp_layer(layer, kind, box_c, box_r)
    box = _box_margins(net, box_c, box_r, y, elide, None, eps, slack=True)
    c, g = c.flatten(1), g.flatten(2)
    weights, offsets = _specification(net, y, c.shape[1], c, elide)
    center = torch.einsum("bkn,bn->bk", weights, c) + offsets
    spread = torch.einsum("bkn,bgn->bgk", weights, g).abs().sum(1)
    zonotope = _zero_label_column(center - spread - SLACK * (1 + center.abs() + spread), y)
    return torch.maximum(zonotope, box) if product else zonotope


# --------------------------------------------------------------------------- the public API


def _check_arguments(x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> None:
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be a batch (N, ...) and y its N labels; got x {tuple(x.shape)}, y {tuple(y.shape)}")


@contextlib.contextmanager
def _eval_mode(modules: tuple[nn.Module, ...] | list[nn.Module] | nn.Module) -> Iterator[None]:
    """The modules in eval mode inside; each module's own mode restored after."""
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    every = [m for root in roots for m in root.modules()]
    modes = [m.training for m in every]
    for m in every:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(every, modes):
            m.training = mode


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                        norm: Literal["linf", "l2"] = "linf", method: Method = "ibp") -> torch.Tensor:
    """(B, K) float: per example and class j, a lower bound of z_y(x') - z_j(x') over every x' in the eps ball
    around x intersected with [0, 1]^d (the j = y column is 0).

    Differentiable where autograd is on (IBP trains through it: ``worst_case_logits``). DeepZ goes through the
    images in chunks that fit ``DEEPZ_MAX_BYTES``. Unsupported where ``method`` cannot take ``model``."""
    _check_arguments(x, y, eps, norm)
    net = _network(model, method)
    if method == "ibp":
        return _ibp_margins(net, x, y, eps, norm, slack=True)
    sizes = _shapes(net, tuple(x.shape[1:]), x.device)
    need = max(_deepz_bytes(net, sizes, norm), 1)
    if need > DEEPZ_MAX_BYTES:
        raise Unsupported(f"deepz: the zonotope needs up to {need / 2**20:,.0f} MiB per image, over its "
                          f"{DEEPZ_MAX_BYTES // 2**20} MiB limit: use ibp")
    chunk = max(1, DEEPZ_MAX_BYTES // need)
    parts = [_zonotope_margins(net, x[i:i + chunk], y[i:i + chunk], eps, norm)
             for i in range(0, max(len(x), 1), chunk)]
    return torch.cat(parts)


def certify_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                   norm: Literal["linf", "l2"] = "linf", method: Method = "ibp", batch_size: int = 256,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """bool per example: classified right at x AND certified (every margin lower bound > 0) — "certified
    accuracy"'s flags.

    ``model`` must be on ``device``; images go there ``batch_size`` at a time, the flags come back on x's
    device. The model is used in eval mode (its modes restored after)."""
    _check_arguments(x, y, eps, norm)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flags = []
    with torch.no_grad(), _eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            right = model(xb).argmax(1) == yb
            margins = margin_lower_bounds(model, xb, yb, eps, norm=norm, method=method)
            others = margins.masked_fill(F.one_hot(yb, margins.shape[1]).bool(), math.inf)
            flags.append((right & (others > 0).all(1)).to(x.device))
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool, device=x.device)


def worst_case_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                      norm: Literal["linf", "l2"] = "linf") -> torch.Tensor:
    """IBP's worst-case logits for training (Gowal et al. 2018): ẑ_j = -margin_lower_bound_j (ẑ_y = 0),
    differentiable. (No float32 slack: a training objective, not a certificate.)"""
    _check_arguments(x, y, eps, norm)
    return -_ibp_margins(_network(model, "ibp"), x, y, eps, norm, slack=False)
