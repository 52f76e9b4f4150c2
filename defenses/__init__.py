"""Built-in defenses: one module per family, each registering itself on import.

To add a defense, write a module here (or in your own package, registered
through the ``advbench.defenses`` entry-point group) with a class decorated by
``@defenses.register("name")``; its keyword-only ``__init__`` parameters are
what a suite may set. See README.md, "Adding a defense".
"""

from . import adversarial_training, baseline, distillation, ensemble, gaussian_augment  # noqa: F401  (registration)
from . import bimodel_detector  # noqa: F401  (registration)
