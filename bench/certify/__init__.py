"""Certified lower bounds on robust accuracy (issue 27): the other side of an attack's upper bound.

* ``bench.certify.bounds``: interval bound propagation (IBP) and DeepZ zonotopes through a deterministic
  network: per example, whether no input in the ε ball (L∞ or L2) can change its decision.
* ``bench.certify.smoothing``: randomized smoothing (Cohen et al. 2019): a smoothed classifier's PREDICT and
  CERTIFY (a Monte-Carlo L2 radius with a Clopper–Pearson bound).

A method that cannot take a network (a layer it has no rule for, a network beyond its size limit) raises
``Unsupported`` with the reason: the leaderboard shows "—" and the reason, never an error.
"""

from __future__ import annotations


class Unsupported(Exception):
    """A network a certification method cannot take; the message is the reason a reader sees."""
