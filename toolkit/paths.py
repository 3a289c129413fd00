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
