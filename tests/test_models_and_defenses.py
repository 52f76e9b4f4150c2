"""Architectures match the papers; defenses train, checkpoint, and adapt to ART and Foolbox."""

import numpy as np
import pytest
import torch

from bench.models import InputSpec, build_architecture
from bench.registry import architectures, defenses

MNIST = InputSpec(1, 28, 28, 10, (0.13,), (0.31,))
CIFAR = InputSpec(3, 32, 32, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_architectures_have_the_papers_parameter_counts():
    # Strauss Table 1: conv 3x3x32 (320) + conv 3x3x32 (9,248) + fc 12*12*32 -> 128 (589,952) + fc 128 -> 10 (1,290)
    assert n_params(build_architecture("strauss-mnist", MNIST)) == 320 + 9248 + 589952 + 1290
    # Monteiro CNN: conv5x5x10 (260) + conv5x5x20 (5,020) + fc 320 -> 50 (16,050) + fc 50 -> 10 (510)
    assert n_params(build_architecture("monteiro-cnn", MNIST)) == 260 + 5020 + 16050 + 510
    # Monteiro MLP: 784 -> 320 -> 50 -> 10
    assert n_params(build_architecture("monteiro-mlp", MNIST)) == 251200 + 16050 + 510
    # Strauss Table 3 ends in fc 512 -> 10 after three conv blocks of 32/64/128 filters
    cifar = build_architecture("strauss-cifar", CIFAR)
    convs = [m for m in cifar.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]


@pytest.mark.parametrize("name", ["strauss-mnist", "strauss-cifar", "monteiro-cnn", "monteiro-mlp", "vgg16",
                                  "resnet18", "resnet50"])
def test_every_architecture_maps_images_to_logits(name):
    spec = MNIST if name.startswith(("strauss-mnist", "monteiro")) else CIFAR
    model = build_architecture(name, spec).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *spec.shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_mixed_architecture_variants_change_the_net():
    base = n_params(build_architecture("strauss-mnist", MNIST))
    assert n_params(build_architecture("strauss-mnist", MNIST, {"extra_filters": 4})) > base
    assert n_params(build_architecture("strauss-mnist", MNIST, {"extra_conv": True})) != base
    assert "strauss-mnist" in architectures.names()


@pytest.fixture(scope="module")
def trained(digits):
    defense = defenses.get("undefended").build(epochs=3, batch_size=64)
    defense.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    defense.fit(digits, seed=0, progress=False)
    return defense


def test_training_is_seeded_and_checkpoints_round_trip(digits, trained, tmp_path):
    again = defenses.get("undefended").build(epochs=3, batch_size=64)
    again.setup(digits.input_spec(), seed=0, device=torch.device("cpu"))
    again.fit(digits, seed=0, progress=False)
    x = digits.test_x[:50]
    assert torch.allclose(trained.deployed()(x), again.deployed()(x), atol=1e-5), "same seed, same model"

    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    restored = defenses.get("undefended").build(epochs=3, batch_size=64)
    restored.setup(digits.input_spec(), seed=123, device=torch.device("cpu"))
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert torch.equal(trained.deployed()(x), restored.deployed()(x))


def test_art_and_foolbox_adapters_agree_with_the_deployed_model(digits, trained):
    x, y = digits.test_x[:64], digits.test_y[:64]
    with torch.no_grad():
        expected = trained.deployed()(x).argmax(1).numpy()
    assert (expected == y.numpy()).mean() > 0.8
    art_pred = trained.as_art().predict(x.numpy()).argmax(1)
    np.testing.assert_array_equal(art_pred, expected)
    import foolbox as fb

    assert fb.accuracy(trained.as_foolbox(), x, y) == pytest.approx((expected == y.numpy()).mean())
    assert trained.surface_names() == ["deployed"] and set(trained.surfaces()) == {"deployed"}


def test_gaussian_augment_adds_noise_of_the_requested_std():
    defense = defenses.get("gaussian-augment").build(std=0.1)
    x = torch.full((256, 1, 8, 8), 0.5)
    noisy, _ = defense.augment(x, torch.zeros(256), torch.Generator().manual_seed(0))
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.05)
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_crop_flip_keeps_shape_and_moves_pixels():
    from bench.training import random_crop_flip

    x = torch.rand(32, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
