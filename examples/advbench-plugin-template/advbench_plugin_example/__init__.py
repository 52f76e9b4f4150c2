"""A template advbench plugin: a test-time defense and an attack, registered through entry points.

``pyproject.toml`` names the modules ``defenses`` and ``attacks`` under the ``advbench.defenses`` and
``advbench.attacks`` entry-point groups; advbench imports them when it first looks a defense or an
attack up, and their decorators register the entries. Nothing here is imported by this ``__init__``:
each registry loads only what it needs.
"""

__version__ = "0.1.0"
