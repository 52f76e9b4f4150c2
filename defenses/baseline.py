"""The undefended baseline: one classifier trained on clean data."""

from bench.defense import ClassifierDefense
from bench.registry import defenses


@defenses.register("undefended", version="1")
class Undefended(ClassifierDefense):
    """Undefended baseline: a classifier trained with plain cross-entropy on clean data."""
