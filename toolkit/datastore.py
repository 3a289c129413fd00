"""ptk's data directory: decoded data sets stored once, checked on every load.

Layout under the data directory (``--data-dir``, ``$PTK_DATA_DIR``, or the
platform's user data dir; see :mod:`ptk.paths`)::

    datasets/<name>.npz          images uint8 (N, C, H, W) and int64 labels (np.savez, no pickles)
    datasets/<name>.json         sidecar: format, sha256 and size of the .npz, classes, shapes, source
    cache/imagefolder/<key>.*    the same pair for ``--dataset imagefolder -o imagefolder.path=...``

Both files are written atomically, the .npz first and the sidecar last, so a
stored data set is complete only once its checksum is on disk. Loading recomputes
the sha256 and never parses a file that fails it: the pair is removed and the
user is told, in one line, to import again. ``np.load`` runs with
``allow_pickle=False``, so a stored file cannot run code either way.

This module only stores and loads :class:`ptk.Dataset` objects; deciding how to
read a path the user gives (CIFAR-10, Fashion-MNIST, an image folder) is
:mod:`ptk.importers`' job.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, sha256_file, write_json
from .data import Dataset
from .errors import DataCorrupt, UsageError

__all__ = ["DataCorrupt", "FORMAT", "DataStore", "StoredInfo", "check_name", "imagefolder_cache", "stored_datasets"]

FORMAT = "ptk-dataset-1"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """NAME if it is a valid data set name (it becomes a file name, so no '/', '..' or capitals)."""
    if not NAME_RE.match(name):
        raise UsageError(f"data set name {name!r} must be 1-64 lower-case letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit")
    return name


@dataclass
class StoredInfo:
    """What the sidecar says about one stored data set (read without touching the .npz)."""

    name: str
    path: Path
    classes: list[str]
    shapes: dict[str, list[int]]
    bytes: int
    source: str
    imported: str
    extra: dict[str, Any]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.shapes["x_train"][1:])

    @property
    def train_size(self) -> int:
        return self.shapes["x_train"][0]

    @property
    def test_size(self) -> int:
        return self.shapes["x_test"][0]


class DataStore:
    """A folder of stored data sets, each a ``<name>.npz`` plus its ``<name>.json`` sidecar."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def npz(self, name: str) -> Path:
        return self.root / f"{name}.npz"

    def sidecar(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def save(self, name: str, data: Dataset, source: str, extra: dict[str, Any] | None = None) -> StoredInfo:
        """Write the arrays and then the sidecar, each atomically; replaces a stored set of that name.

        The old sidecar goes first: an import killed half-way leaves an .npz without a sidecar,
        which :meth:`load` rejects, never new pixels under an old checksum or old classes.
        """
        arrays = data.arrays()
        self.sidecar(name).unlink(missing_ok=True)
        with atomic_path(self.npz(name)) as tmp:
            with open(tmp, "wb") as f:  # a file object, so np.savez does not append its own ".npz"
                np.savez(f, **arrays)
            digest, size = sha256_file(tmp), tmp.stat().st_size
        meta = {"format": FORMAT, "name": name, "sha256": digest, "bytes": size, "classes": list(data.classes),
                "shapes": {k: list(v.shape) for k, v in arrays.items()},
                "dtypes": {k: str(v.dtype) for k, v in arrays.items()},
                "source": source, "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "extra": extra or {}}
        write_json(self.sidecar(name), meta)
        return self._info(name, meta)

    def info(self, name: str) -> StoredInfo | None:
        """The sidecar's description, or None if the set is not stored (or its sidecar is unreadable)."""
        meta = self._meta(name)
        return self._info(name, meta) if meta else None

    def list(self) -> list[StoredInfo]:
        if not self.root.is_dir():
            return []
        found = (self.info(p.stem) for p in sorted(self.root.glob("*.json")))
        return [i for i in found if i is not None]

    def load(self, name: str, fix: str) -> Dataset | None:
        """The stored set as a Dataset named NAME, or None if absent; a set that fails its checksum is
        removed (DataCorrupt). A name that is not a valid data set name is a UsageError.

        ``fix`` is the command that recreates the set, quoted in the one-line message.
        """
        check_name(name)
        npz, sidecar = self.npz(name), self.sidecar(name)
        if not npz.exists() and not sidecar.exists():
            return None
        meta = self._meta(name)
        problem = None
        if meta is None:
            problem = "its sidecar .json is missing or unreadable (an interrupted import?)"
        elif not npz.exists():
            problem = "its .npz file is missing"
        elif npz.stat().st_size != meta["bytes"]:
            problem = f"the file is {npz.stat().st_size} bytes, {meta['bytes']} were written (truncated?)"
        elif sha256_file(npz) != meta["sha256"]:
            problem = "its sha256 does not match the one recorded at import (corrupt file)"
        if problem is None:
            try:
                with np.load(npz, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in Dataset.ARRAYS}
                if {k: list(v.shape) for k, v in arrays.items()} != meta["shapes"]:
                    raise ValueError("array shapes differ from the sidecar")
                return Dataset.from_numpy(name, classes=list(meta["classes"]), **arrays)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # TypeError: a dtype torch cannot hold
                problem = f"it does not hold the expected arrays ({exc})"
        self.remove(name)
        raise DataCorrupt(f"stored data set {name!r} at {npz} is unusable: {problem}; removed it. "
                          f"Import it again: {fix}")

    def remove(self, name: str) -> None:
        for p in (self.npz(name), self.sidecar(name)):
            p.unlink(missing_ok=True)

    def _meta(self, name: str) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.sidecar(name).read_text())
        except (OSError, ValueError):
            return None
        keys = {"format", "sha256", "bytes", "classes", "shapes"}
        if not isinstance(meta, dict) or not keys <= set(meta) or meta["format"] != FORMAT:
            return None
        return meta

    def _info(self, name: str, meta: dict[str, Any]) -> StoredInfo:
        return StoredInfo(name, self.npz(name), list(meta["classes"]), dict(meta["shapes"]), int(meta["bytes"]),
                          str(meta.get("source", "")), str(meta.get("imported", "")), dict(meta.get("extra", {})))


def stored_datasets(data_dir: Path) -> DataStore:
    """Data sets the user imported (``ptk data import`` / ``ptk data download``)."""
    return DataStore(Path(data_dir) / "datasets")


def imagefolder_cache(data_dir: Path) -> DataStore:
    """Decoded copies of image folders given with ``-o imagefolder.path=...``, keyed by path and mtimes."""
    return DataStore(Path(data_dir) / "cache" / "imagefolder")
