"""Architectures: the papers' small nets plus CIFAR-style VGG-16 and ResNets.

Every factory takes the dataset's ``InputSpec`` (channels, size, classes,
per-channel mean/std) and returns an ``nn.Module`` mapping images in [0, 1]
(NCHW) to logits. Normalization lives inside the model, so attacks work in [0, 1] pixel space.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from .registry import architectures


@dataclass(frozen=True)
class InputSpec:
    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


class Normalize(nn.Module):
    """Per-channel standardization inside the model, so attacks see [0, 1] inputs."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _with_normalization(spec: InputSpec, net: nn.Module, normalize: bool) -> nn.Module:
    if normalize and spec.mean:
        return nn.Sequential(Normalize(spec.mean, spec.std), net)
    return net


def _flat_features(features: nn.Module, spec: InputSpec) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *spec.shape)).flatten(1).shape[1]


def _conv_block(c_in: int, c_out: int, layers: int, extra_filters: int = 0) -> list[nn.Module]:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv2d(c_in if i == 0 else c_out + extra_filters, c_out + extra_filters, 3), nn.ReLU()]
    return mods


@architectures.register("strauss-mnist")
def strauss_mnist(spec: InputSpec, *, extra_filters: int = 0, extra_conv: bool = False,
                  dropout: float = 0.5, normalize: bool = False) -> nn.Module:
    """Strauss et al. 2017, Table 1: conv32-conv32-pool-fc128-dropout-fc.

    ``extra_filters``/``extra_conv`` give the 'mixed architecture' ensemble variants
    (a few more filters or one more conv layer per member).
    """
    features = nn.Sequential(
        *_conv_block(spec.channels, 32, 3 if extra_conv else 2, extra_filters),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    net = nn.Sequential(
        features,
        nn.Linear(_flat_features(features, spec), 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, spec.num_classes),
    )
    return _with_normalization(spec, net, normalize)


@architectures.register("strauss-cifar")
def strauss_cifar(spec: InputSpec, *, extra_filters: int = 0, normalize: bool = False) -> nn.Module:
    """Strauss et al. 2017, Table 3: three conv-conv-pool-dropout blocks (32/64/128), fc512, fc."""
    pad = {"padding": 1}  # keeps 32x32 inputs from shrinking below the third pooling
    e = extra_filters
    features = nn.Sequential(
        nn.Conv2d(spec.channels, 32 + e, 3, **pad), nn.ReLU(), nn.Conv2d(32 + e, 32 + e, 3, **pad), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.2),
        nn.Conv2d(32 + e, 64 + e, 3, **pad), nn.ReLU(), nn.Conv2d(64 + e, 64 + e, 3, **pad), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.3),
        nn.Conv2d(64 + e, 128 + e, 3, **pad), nn.ReLU(), nn.Conv2d(128 + e, 128 + e, 3, **pad), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.4),
        nn.Flatten(),
    )
    net = nn.Sequential(
        features, nn.Linear(_flat_features(features, spec), 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, spec.num_classes),
    )
    return _with_normalization(spec, net, normalize)


@architectures.register("monteiro-cnn")
def monteiro_cnn(spec: InputSpec, *, normalize: bool = False) -> nn.Module:
    """Monteiro et al. 2019 MNIST CNN: conv5x5(10)-pool-conv5x5(20)-pool-fc50-dropout-fc.

    The paper prints linear(350, 50); on 28x28 inputs the flattened size is 320
    (20 x 4 x 4), as in PyTorch's MNIST example the paper builds on, so it is computed.
    """
    features = nn.Sequential(
        nn.Conv2d(spec.channels, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
    )
    net = nn.Sequential(
        features, nn.Linear(_flat_features(features, spec), 50), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(50, spec.num_classes),
    )
    return _with_normalization(spec, net, normalize)



@contextlib.contextmanager
def _own_init(init_seed: int | None) -> Iterator[None]:
    """Parameters built inside are drawn from ``init_seed`` (None: from the caller's generator, as always);
    the caller's generator state is restored after."""
    if init_seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        yield


@architectures.register("abbasi-mnist")
def abbasi_mnist(spec: InputSpec, *, dropout: float = 0.5, init_seed: int | None = None,
                 normalize: bool = False) -> nn.Module:
    """Abbasi et al. 2018's MNIST CNN (cuda-convnet's layers-18pct): three 5x5 conv layers of 32, 32 and 64
    filters, each ReLU and 2x2 max-pool, then one fully connected layer with dropout (p = 0.5) before it.

    ``init_seed`` draws the parameters from their own seed: an independently initialised instance (the
    paper's black-box surrogate) of a model that is otherwise configured like another.
    """
    with _own_init(init_seed):
        features = nn.Sequential(
            nn.Conv2d(spec.channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        net = nn.Sequential(features, nn.Dropout(dropout), nn.Linear(_flat_features(features, spec), spec.num_classes))
    return _with_normalization(spec, net, normalize)

@architectures.register("monteiro-mlp")
def monteiro_mlp(spec: InputSpec, *, normalize: bool = False) -> nn.Module:
    """Monteiro et al. 2019 MNIST MLP: fc320-dropout-fc50-dropout-fc."""
    n_in = spec.channels * spec.height * spec.width
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, 320), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(320, 50), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(50, spec.num_classes),
    )
    return _with_normalization(spec, net, normalize)


@architectures.register("vgg16")
def vgg16(spec: InputSpec, *, batch_norm: bool = True, normalize: bool = True,
          init_seed: int | None = None) -> nn.Module:
    """CIFAR-style VGG-16: torchvision's VGG-16 feature stack with a 512-unit linear head.

    ``init_seed``: parameters drawn from their own seed (an independently initialised instance, e.g. a
    black-box surrogate of a model otherwise configured alike)."""
    with _own_init(init_seed):
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=batch_norm)
        features[0] = nn.Conv2d(spec.channels, 64, 3, padding=1)
        pooled = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        net = nn.Sequential(pooled, nn.Linear(512, spec.num_classes))
    return _with_normalization(spec, net, normalize)


def _cifar_resnet(spec: InputSpec, block: type, layers: list[int], normalize: bool) -> nn.Module:
    net = tv_resnet.ResNet(block, layers, num_classes=spec.num_classes)
    # CIFAR variant (He et al. 2016, Sec. 4.2 practice): 3x3 stride-1 stem, no max-pool.
    net.conv1 = nn.Conv2d(spec.channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return _with_normalization(spec, net, normalize)


@architectures.register("resnet18")
def resnet18(spec: InputSpec, *, normalize: bool = True) -> nn.Module:
    """CIFAR-style ResNet-18 built from torchvision's ResNet."""
    return _cifar_resnet(spec, tv_resnet.BasicBlock, [2, 2, 2, 2], normalize)


@architectures.register("resnet50")
def resnet50(spec: InputSpec, *, normalize: bool = True) -> nn.Module:
    """CIFAR-style ResNet-50 built from torchvision's ResNet (Monteiro et al.'s CIFAR model 2)."""
    return _cifar_resnet(spec, tv_resnet.Bottleneck, [3, 4, 6, 3], normalize)


def build_architecture(name: str, spec: InputSpec, params: dict | None = None) -> nn.Module:
    return architectures.get(name).build(spec, **(params or {}))
