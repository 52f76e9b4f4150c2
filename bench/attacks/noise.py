"""Random noise on the surface of the budget ball: the baseline every gradient attack must beat.

Carlini et al. 2019 ("On Evaluating Adversarial Robustness", Sec. 5): if random noise of the same norm
lowers accuracy more than a gradient attack does, the gradient is not pointing anywhere useful (masked,
obfuscated or simply broken). The soundness checks (``bench.checks``, check 6) run these at a suite's
headline budget; a suite may name them like any attack.

``noise-linf`` adds eps times random signs (a vertex of the L-infinity ball: the largest noise the budget
allows); ``noise-l2`` a Gaussian direction scaled to L2 norm eps. Each image gets ``draws`` draws and keeps
the first that the model misclassifies (else the last). No gradient is ever computed.

They are baselines, not attacks, and so not registered: a suite cannot name them, and the attack tests'
"fools at least one image" does not apply (at the smoke-test budgets, noise fools none). The checks' own
``check-noise`` task kind runs them (``bench.runner.check_steps``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..threat_models import ThreatModel
from .base import Attack, AttackJob, check_positive, count_of, per_example
from .surface import custom_logits


class _Noise(Attack):
    """Shared by the L-infinity and L2 entries."""

    backends = ("torch",)
    quick_params = {"draws": 3}
    uses_gradients: ClassVar[bool] = False
    step_param = "draws"
    _norm: ClassVar[str]

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A forward pass per draw."""
        return count_of(params, "draws", 1)

    def __init__(self, *, backend: str | None = None, draws: int = 10):
        super().__init__(backend=backend)
        check_positive("draws", draws)
        self.draws = draws

    def _noise(self, shape: torch.Size, eps: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        if self._norm == "linf":
            return (torch.randint(0, 2, shape, generator=gen, device=device).float() * 2 - 1) * eps
        noise = torch.randn(shape, generator=gen, device=device)
        return noise * per_example(eps / noise.flatten(1).norm(dim=1).clamp_min(1e-12), noise.ndim)

    def _run_torch(self, job: AttackJob) -> torch.Tensor:
        gen = job.generator()
        logits = custom_logits(job.model)
        outs = []
        for x, y, _ in job.batches():
            out, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
            for _ in range(self.draws):
                noisy = (x + self._noise(x.shape, job.budget, gen, x.device)).clamp(0.0, 1.0)
                with torch.no_grad():  # a surface with attack_logits (a reject option) says what gets through
                    scores = logits(noisy, y) if logits is not None else job.model(noisy)
                    wrong = scores.argmax(1) != y
                keep = ~fooled  # an image not fooled yet takes this draw (the last one if none fools)
                out[keep] = noisy[keep]
                fooled = fooled | wrong
            outs.append(out.cpu())
        return torch.cat(outs)


class NoiseLinf(_Noise):
    """Random signs of size eps (the L-infinity ball's vertices), ``draws`` per image; the first that fools wins."""

    threat_model = ThreatModel.LINF
    _norm = "linf"


class NoiseL2(_Noise):
    """A Gaussian direction of L2 norm eps, ``draws`` per image; the first that fools wins."""

    threat_model = ThreatModel.L2
    _norm = "l2"


# The baselines by the name a check's config gives them (``bench.checks.NOISE_ATTACKS``).
NOISE_BASELINES = {"noise-linf": NoiseLinf, "noise-l2": NoiseL2}
