"""Hook specifications: the whole contract between ptk and its plugins.

Every hook receives a ``register`` callback, so one plugin module can register
any number of attacks, defenses, datasets or models (the simonw/llm pattern).
The built-in plugins use exactly these hooks, through the same ``ptk``
entry-point group a third-party distribution uses.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ptk")
hookimpl = pluggy.HookimplMarker("ptk")


@hookspec
def register_attacks(register):
    """Call ``register(attack)`` for each :class:`ptk.Attack` this plugin provides."""


@hookspec
def register_defenses(register):
    """Call ``register(defense)`` for each :class:`ptk.Defense` this plugin provides."""


@hookspec
def register_datasets(register):
    """Call ``register(dataset)`` for each :class:`ptk.DatasetSource` this plugin provides."""


@hookspec
def register_models(register):
    """Call ``register(model)`` for each :class:`ptk.ModelSpec` this plugin provides."""
