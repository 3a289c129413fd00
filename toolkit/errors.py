"""Every exception ptk raises on purpose, in one module.

They live together so a caller can see at a glance which failures are the
user's (exit 2, one line) and which are a plugin's (named in the message);
each is still importable from the module that raises it and from ``ptk``.
Nothing here imports the rest of ptk, so any module can import it.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 2."""


class DataMissing(Exception):
    """Raised by a data set plugin when its files are not there; the message says how to get them."""


class DataCorrupt(DataMissing):
    """A stored data set failed its checksum; it has been removed and must be imported again."""


class ThreatModelViolation(Exception):
    """A defense read something its declared threat model says it does not know."""


class PluginError(Exception):
    """A plugin failed (import, validation, or while running); the message names the plugin."""
