"""Built-in defenses: one module per family, each registering itself on import.

To add a defense, drop a module here (or put it in your own package, registered
through the ``advbench.defenses`` entry-point group) with a class decorated by
``@defenses.register("name")``; its keyword-only ``__init__`` parameters are
what a suite may set. Every module of this package is imported when the
defense registry first loads, so nothing needs listing here. See README.md,
"Adding a defense".
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registration
