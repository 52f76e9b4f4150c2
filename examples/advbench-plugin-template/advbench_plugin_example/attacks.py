"""An attack: R+FGSM (Tramèr et al. 2018), a random sign step, then a gradient sign step.

FGSM from a random point of the L-infinity ball: a step of ``rel_alpha * eps`` along random signs, then
an FGSM step of the remaining ``(1 - rel_alpha) * eps`` along the sign of the loss gradient there. The
random step gets past the sharp curvature near the data that makes plain FGSM underestimate a model
trained against it. The plain-PyTorch backend iterates ``job.batches()``, so the harness's craft
progress bar counts its batches with no code here.
"""

from __future__ import annotations

import torch

from bench.attacks import Attack, AttackJob, attack_loss
from bench.registry import attacks
from bench.threat_models import ThreatModel


# ``version``: bump it when a change alters the examples the attack produces, so stored results are recomputed.
@attacks.register("rand-fgsm", version="1")
class RandFGSM(Attack):
    """R+FGSM (Tramèr et al. 2018): a random sign step of rel_alpha * eps, then an FGSM step of the rest."""

    threat_model = ThreatModel.LINF  # what the budget bounds
    budget_param = "eps"             # a budget kind of bench/attacks/base.py: eps, c or gamma
    backends = ("torch",)            # implementations, the default first: one _run_<backend> each
    ascends_attack_loss = True       # it follows the surface's attack_loss (an ensemble's, a detector's)

    def __init__(self, *, backend: str | None = None, rel_alpha: float = 0.5):
        super().__init__(backend=backend)  # `backend` is typed from `backends` for you
        if not 0.0 <= rel_alpha <= 1.0:  # a ValueError: the suite loader reports it with file and key
            raise ValueError(f"rel_alpha is the random step's fraction of eps, in [0, 1]; got {rel_alpha}")
        self.rel_alpha = rel_alpha

    def _run_torch(self, job: AttackJob) -> torch.Tensor:
        gen = job.generator()  # seeded from the task: the same seed gives the same examples
        alpha = self.rel_alpha * job.budget
        outs = []
        for x0, y, _ in job.batches():  # on job.device; each batch is one step of the progress bar
            signs = torch.randint(0, 2, x0.shape, generator=gen, device=x0.device).to(x0.dtype) * 2 - 1
            x = (x0 + alpha * signs).clamp(0.0, 1.0).requires_grad_(True)
            with torch.enable_grad():  # the model's parameters are frozen: the gradient is the input's
                (grad,) = torch.autograd.grad(attack_loss(job.model, x, y), x)
            outs.append((x.detach() + (job.budget - alpha) * grad.sign()).clamp(0.0, 1.0).cpu())
        return torch.cat(outs)  # Attack.run projects onto the eps ball, clips to [0, 1] and checks the shape
