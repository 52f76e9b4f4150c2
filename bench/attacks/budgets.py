"""Budget kinds as data: what a budget number means for an attack (``Attack.budget_param`` names one), its
words, and the bounds ``Attack.budget_error`` checks it against.

A new kind of budget is a new entry of ``BUDGET_KINDS``; where to add one: docs/architecture.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from ..threat_models import ThreatModel

# The input shape (C, H, W) a budget is bounded for when the images' shape is unknown (a plugin dataset whose
# registry entry has no ``shape`` meta, a budget checked without images): a generous fixed bound, as if the
# images were 3x512x512 (the largest built-in dataset, STL-10, is 3x96x96), which still keeps absurd numbers
# (1e308) out of the store and its plots.
FALLBACK_INPUT_SHAPE = (3, 512, 512)


@dataclass(frozen=True)
class Bound:
    """An inclusive upper bound on a budget number and the message when a budget exceeds it.

    The bound is ``limit * d ** dims_power`` for images of d = C*H*W values in [0, 1]: ``dims_power`` 0 is a
    fixed bound, 0.5 the L2 diameter of the input space (sqrt(d)), 1 its L1 diameter (d).
    """

    limit: float
    # str.format'ed with ``budget`` (the float), ``bound`` (the bound for these images) and ``inputs`` (their
    # shape in words)
    message: str
    dims_power: float = 0.0

    def bound_for(self, input_shape: tuple[int, ...] | None) -> float:
        return self.limit * math.prod(input_shape or FALLBACK_INPUT_SHAPE) ** self.dims_power


def shape_words(input_shape: tuple[int, ...] | None) -> str:
    """How a message names the images a budget is bounded for: "1x28x28 images" or the fallback."""
    if input_shape:
        return f"{'x'.join(map(str, input_shape))} images"
    return f"images of unknown shape, bounded as {'x'.join(map(str, FALLBACK_INPUT_SHAPE))}"


ANY_THREAT_MODEL = "*"  # a key of ``BudgetKind.upper``: the bound holds whatever the threat model


@dataclass(frozen=True)
class BudgetKind:
    """What a budget number means for the attacks whose ``budget_param`` names this kind, as data.

    ``Attack.budget_error`` checks every kind the same way (given, a number, finite, not negative), then
    ``zero`` and ``upper`` from here; a new kind of budget is a new entry of ``BUDGET_KINDS``.
    """

    name: str
    # How messages name the budget; ``{distance}`` is the attack's threat model, as ``distance_words`` names it.
    words: str
    # The message when a budget of 0 is refused (str.format'ed with ``budget``); None: 0 is allowed.
    zero: str | None = None
    # Upper bounds by threat model value (``ANY_THREAT_MODEL``: for all of them; a kind whose bound is per
    # threat model bounds only the threat models it lists).
    upper: Mapping[str, Bound] = field(default_factory=dict)
    # Whether the budget bounds a distance (the threat model's norm): then a result is projected onto the
    # budget ball, and a budget of 0 returns the images unchanged without running the attack.
    distance_bound: bool = False
    # How ``{distance}`` in ``words`` names a threat model; others by their value.
    distance_words: Mapping[str, str] = field(default_factory=dict)

    def words_for(self, threat_model: str) -> str:
        tm = str(threat_model)
        return self.words.format(distance=self.distance_words.get(tm, tm))

    def upper_for(self, threat_model: str) -> Bound | None:
        return self.upper.get(str(threat_model), self.upper.get(ANY_THREAT_MODEL))


_GAMMA_RANGE = "gamma is a fraction of the features and must be in (0, 1], got {budget}"
# No two images in [0, 1] are further apart than the input space's diameter: sqrt(C*H*W) in L2, C*H*W in L1.
_L2_DIAMETER = Bound(1.0, "L2 eps {budget} exceeds {bound:.4g}, the largest L2 distance between two {inputs} in "
                          "[0, 1] (sqrt(C*H*W))", dims_power=0.5)
# C&W and EAD weigh their margin loss by c against the distance, starting the search over c at the budget and
# multiplying it by 10 while the attack fails. Carlini & Wagner start at 1e-3 (the suites here at 0.00025 to
# 2.5); a start above 1e6 is a slip of the keyboard, not an experiment, and the search would take it higher still.
_C_LIMIT = 1e6

BUDGET_KINDS: dict[str, BudgetKind] = {
    "eps": BudgetKind(
        "eps", "{distance} eps", distance_bound=True,
        distance_words={ThreatModel.CORRUPTION.value: "L2"},  # a corruption's eps bounds its L2 change
        upper={ThreatModel.LINF.value: Bound(1.0, "L-infinity eps {budget} exceeds 1, the whole [0, 1] pixel "
                                                  "range (images are in [0, 1]; did you mean eps/255?)"),
               ThreatModel.L2.value: _L2_DIAMETER,
               ThreatModel.CORRUPTION.value: _L2_DIAMETER,
               ThreatModel.L1.value: Bound(1.0, "L1 eps {budget} exceeds {bound:g}, the largest L1 distance between "
                                                "two {inputs} in [0, 1] (C*H*W)", dims_power=1.0),
               ThreatModel.L0.value: Bound(1.0, "L0 eps {budget} exceeds {bound:g}, the number of values of "
                                                "{inputs} (C*H*W)", dims_power=1.0)}),
    "c": BudgetKind(
        "c", "the constant c",
        zero="the constant c must be > 0 (the search over c scales it by 10 from its start)",
        upper={ANY_THREAT_MODEL: Bound(_C_LIMIT, "the constant c {budget} exceeds {bound:g}, the largest start of the "
                                                 "search over c (which multiplies it by 10 while the attack fails)")}),
    "gamma": BudgetKind(
        "gamma", "gamma", zero=_GAMMA_RANGE, upper={ANY_THREAT_MODEL: Bound(1.0, _GAMMA_RANGE)}),
}
