"""Our pgd-at and trades (defenses/reference.py) against ART 1.20's AdversarialTrainerMadryPGD and
AdversarialTrainerTRADESPyTorch: same net, initial weights, optimizer, data and budget; clean and PGD-robust
test accuracy and seconds per epoch.

    OMP_NUM_THREADS=1 python scripts/compare_adversarial_training.py [--dataset digits] [--epochs 10] [--eps 0.1]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # ART's epoch bars (read when tqdm is imported)

import numpy as np
import torch

from bench.attacks import get_attack
from bench.data import DataContext, load_dataset
from bench.registry import defenses


def accuracy(model, x, y, eps, steps, seed):
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    adv = get_attack("pgd-linf", {"steps": steps}).run(model, x, y, eps, seed=seed)
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).float().mean().item()
    return clean, robust


def art_classifier(model, spec, lr):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=spec.shape,
                             optimizer=torch.optim.Adam(model.parameters(), lr=lr), nb_classes=spec.num_classes,
                             clip_values=(0.0, 1.0), device_type="cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eval-steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    data = load_dataset(args.dataset, {}, DataContext("data"))
    spec, x, y = data.input_spec(), data.test_x, data.test_y
    step_size = 2.5 * args.eps / args.steps
    common = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    budget = {"eps": args.eps, "steps": args.steps, "step_size": step_size}
    print(f"{args.dataset}: {len(data.train_x)} train / {len(x)} test; eps {args.eps}, {args.steps} training steps "
          f"of {step_size:.4g}; robust: PGD-L∞ {args.eval_steps} steps; {args.epochs} epochs, batch "
          f"{args.batch_size}, Adam {args.lr}")

    rows = []
    for name, params in [("undefended", {}), ("pgd-at", budget), ("trades", budget)]:
        defense = defenses.get(name).build(**common, **params)
        defense.setup(spec, seed=args.seed, device=torch.device("cpu"))
        initial = copy.deepcopy(defense.model)
        t = time.perf_counter()
        defense.fit(data, seed=args.seed, progress=False)
        rows.append((f"ours {name}", (time.perf_counter() - t) / args.epochs,
                     *accuracy(defense.model, x, y, args.eps, args.eval_steps, args.seed)))
        if name == "undefended":
            continue

        from art.attacks.evasion import ProjectedGradientDescent
        from art.defences.trainer import (
            AdversarialTrainerMadryPGD,
            AdversarialTrainerTRADESPyTorch,
        )

        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        model = initial
        classifier = art_classifier(model, spec, args.lr)
        x_train, y_train = data.train_x.numpy(), np.eye(spec.num_classes, dtype=np.float32)[data.train_y.numpy()]
        if name == "pgd-at":
            trainer = AdversarialTrainerMadryPGD(classifier, nb_epochs=args.epochs, batch_size=args.batch_size,
                                                 eps=args.eps, eps_step=step_size, max_iter=args.steps)
            trainer.attack.set_params(verbose=False, batch_size=args.batch_size)
        else:
            attack = ProjectedGradientDescent(classifier, norm=np.inf, eps=args.eps, eps_step=step_size,
                                              max_iter=args.steps, num_random_init=1,
                                              batch_size=args.batch_size, verbose=False)
            trainer = AdversarialTrainerTRADESPyTorch(classifier, attack, beta=6.0)
        t = time.perf_counter()
        trainer.fit(x_train, y_train, nb_epochs=args.epochs, batch_size=args.batch_size)
        rows.append((f"ART {name}", (time.perf_counter() - t) / args.epochs,
                     *accuracy(model, x, y, args.eps, args.eval_steps, args.seed)))

    print(f"{'':18} {'s/epoch':>8} {'clean':>7} {'robust':>7}")
    for label, sec, clean, robust in rows:
        print(f"{label:18} {sec:8.2f} {clean:7.3f} {robust:7.3f}")


if __name__ == "__main__":
    main()
