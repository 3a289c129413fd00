"""What every reader shares: the split names, tar archives, and turning arrays into a checked Dataset."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import UsageError

SPLITS = ("train", "test")


def is_tarball(path: Path) -> bool:
    """Whether PATH is a file named like a tar archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)."""
    return path.is_file() and any(path.name.endswith(s) for s in (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def open_tar(path: Path) -> tarfile.TarFile:
    """The archive opened for streaming reads; an unreadable one is the user's UsageError."""
    try:
        return tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"{path} is not a readable tar archive ({exc})") from None


def checked_dataset(where: str, classes: list[str], arrays: dict[str, np.ndarray]) -> Dataset:
    """A :class:`Dataset` named WHERE; what its checks refuse is bad input, so a UsageError naming WHERE."""
    try:
        return Dataset.from_numpy(where, classes=list(classes), **arrays)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
