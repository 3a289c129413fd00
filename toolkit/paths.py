"""Where ptk keeps imported data sets and cached models (overridable per run)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir(override: str | Path | None = None) -> Path:
    """--data-dir, else $PTK_DATA_DIR, else the platform's user data dir."""
    return Path(override or os.environ.get("PTK_DATA_DIR") or platformdirs.user_data_dir("ptk")) 


def cache_dir(override: str | Path | None = None) -> Path:
    """--cache-dir, else $PTK_CACHE_DIR, else the platform's user cache dir."""
    return Path(override or os.environ.get("PTK_CACHE_DIR") or platformdirs.user_cache_dir("ptk"))


def check_folder(out: Path, flag: str = "--out") -> None:
    """Refuse a folder ptk could not write into (a file, a path under a file, no write permission), in one line
    before any work; ``flag`` names the option that gave it."""
    from .errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder; pick a folder path")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {out} lies under {existing}, which is a file; pick a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out} is not writable ({existing} is not); pick a folder you can write to")


def make_folder(out: Path, flag: str = "--out") -> Path:
    """:func:`check_folder`, then the folder made; a failure (a read-only file system, say) is one line too."""
    from .errors import UsageError

    check_folder(out, flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {out}: {exc.strerror or exc}; pick a folder you can write to") from None
    return out
