"""Example third-party ptk plugins; each module is registered by its own ``ptk`` entry point."""

__version__ = "0.1.0"
