"""Threat models: the one list of the distances an attack can work in, with their display names.

An attack class names its threat model (``threat_model = ThreatModel.LINF``); the store keeps the
plain value (``"linf"``); the leaderboard orders its tables by this enum's order and titles them with
``label``. No heavy imports here: the report and the suite loader use it without loading torch.
"""

from __future__ import annotations

from enum import Enum


class ThreatModel(str, Enum):
    """The distance an attack's budget bounds (or ``corruption``: a natural perturbation family)."""

    LINF = "linf"
    L2 = "l2"
    L1 = "l1"
    L0 = "l0"
    CORRUPTION = "corruption"

    def __str__(self) -> str:  # "linf", not "ThreatModel.LINF", in messages, keys and rows
        return self.value

    @property
    def label(self) -> str:
        """How tables and plots name it: L∞, L2, L1, L0, corruption."""
        return _LABELS[self]

    @classmethod
    def label_of(cls, value: str) -> str:
        """The display name of a stored value; unknown values (a plugin's) as they are."""
        try:
            return cls(value).label
        except ValueError:
            return value or "unknown threat model"

    @classmethod
    def rank_of(cls, value: str) -> int:
        """Position in the leaderboard's order; unknown values after the known ones."""
        members = list(cls)
        try:
            return members.index(cls(value))
        except ValueError:
            return len(members)


_LABELS = {ThreatModel.LINF: "L∞", ThreatModel.L2: "L2", ThreatModel.L1: "L1", ThreatModel.L0: "L0",
           ThreatModel.CORRUPTION: "corruption"}
