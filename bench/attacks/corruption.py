"""Corruptions: Gaussian blur, Gaussian noise, salt-and-pepper noise (Foolbox), L2-bounded by eps.

Where to add an attack: docs/architecture.md.
"""

from __future__ import annotations

import torch

from ..registry import attacks
from ..threat_models import ThreatModel
from .backends import foolbox_run
from .base import Attack, AttackJob, check_positive, count_of


@attacks.register("gaussian-blur")
class GaussianBlur(Attack):
    """Gaussian blur with the smallest misclassifying sigma (Foolbox line search), L2-bounded by eps.

    Sigma grows linearly in ``steps`` steps up to ``max_sigma`` (None: the image's
    larger side); an eps budget scales the blur's change down to L2 norm eps,
    None leaves it unbounded. Examples still classified correctly at max_sigma
    come back unperturbed.
    """

    threat_model = ThreatModel.CORRUPTION
    unbounded_ok = True
    backends = ("foolbox",)
    quick_params = {"steps": 20}
    step_param = "steps"

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A forward pass per sigma tried."""
        return count_of(params, "steps") or 1.0

    def __init__(self, *, backend: str | None = None, steps: int = 200,
                 max_sigma: float | None = None):
        super().__init__(backend=backend)
        check_positive("steps", steps)
        if max_sigma is not None:
            check_positive("max_sigma", max_sigma)
        self.steps = steps
        self.max_sigma = max_sigma

    def _run_foolbox(self, job: AttackJob) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.GaussianBlurAttack(distance=fb.distances.l2, steps=self.steps, channel_axis=1,
                                               max_sigma=self.max_sigma)
        return foolbox_run(job, attack, job.budget)[0]


@attacks.register("gaussian-noise")
class GaussianNoise(Attack):
    """Additive Gaussian noise of L2 norm eps, resampled up to ``repeats`` times until misclassified (Foolbox).

    With ``check_trivial``, inputs already misclassified are left as they are;
    examples no draw fools come back unperturbed.
    """

    threat_model = ThreatModel.CORRUPTION
    backends = ("foolbox",)
    quick_params = {"repeats": 20}
    step_param = "repeats"

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A forward pass per draw."""
        return count_of(params, "repeats", 1)

    def __init__(self, *, backend: str | None = None, repeats: int = 100,
                 check_trivial: bool = True):
        super().__init__(backend=backend)
        check_positive("repeats", repeats)
        self.repeats = repeats
        self.check_trivial = check_trivial

    def _run_foolbox(self, job: AttackJob) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.L2RepeatedAdditiveGaussianNoiseAttack(repeats=self.repeats,
                                                                 check_trivial=self.check_trivial)
        return foolbox_run(job, attack, job.budget)[0]


@attacks.register("salt-and-pepper")
class SaltAndPepper(Attack):
    """Salt-and-pepper noise of the smallest misclassifying density (Foolbox search), L2-bounded by eps.

    Runs ``steps`` noise draws of adaptively growing density; with
    ``across_channels`` a pixel's channels flip together. An eps budget scales
    the change down to L2 norm eps, None leaves it unbounded.
    """

    threat_model = ThreatModel.CORRUPTION
    unbounded_ok = True
    backends = ("foolbox",)
    quick_params = {"steps": 100}
    step_param = "steps"

    @classmethod
    def forward_passes(cls, params, budget=None, shape=None) -> float:
        """A forward pass per noise draw."""
        return count_of(params, "steps") or 1.0

    def __init__(self, *, backend: str | None = None, steps: int = 1000,
                 across_channels: bool = True):
        super().__init__(backend=backend)
        check_positive("steps", steps)
        self.steps = steps
        self.across_channels = across_channels

    def _run_foolbox(self, job: AttackJob) -> torch.Tensor:
        import foolbox as fb

        attack = fb.attacks.SaltAndPepperNoiseAttack(steps=self.steps, across_channels=self.across_channels,
                                                     channel_axis=1)
        return foolbox_run(job, attack, job.budget)[0]
