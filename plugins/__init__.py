"""ptk's built-in plugins (installed as ``ptk_plugins``), registered through the ``ptk`` entry-point group."""
