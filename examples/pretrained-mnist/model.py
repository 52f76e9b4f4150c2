"""The network of the example: your own model code would be here (any function or class returning an
``nn.Module``). It is the harness's ``monteiro-cnn`` (Monteiro et al. 2019's MNIST CNN) for 28x28 grey
digits, so that ``suites/pretrained-mnist-quick.yaml`` can train the same network in-suite and show the
two give the same numbers."""

from torch import nn

from bench.models import InputSpec, monteiro_cnn


def mnist_cnn(num_classes: int = 10) -> nn.Module:
    """conv5x5(10)-pool-conv5x5(20)-pool-fc50-dropout-fc for 1x28x28 images in [0, 1]."""
    return monteiro_cnn(InputSpec(1, 28, 28, num_classes))
