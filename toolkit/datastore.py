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
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .api import DataMissing
from .atomic import atomic_path, sha256_file, write_json
from .data import Dataset
from .options import UsageError
from .readers import (CIFAR10_CLASSES, FASHION_MNIST_CLASSES, ImageArrays, is_cifar_batches, is_tarball,
                      read_cifar_batches_dir, read_cifar_tarball, read_idx_folder, read_image_folder)

FORMAT = "ptk-dataset-1"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Where Debian's ``dataset-fashion-mnist`` package puts the official idx files.
DEBIAN_FASHION_MNIST = [Path("/usr/share/datasets/fashion-mnist")]


class DataCorrupt(DataMissing):
    """A stored data set failed its checksum; it has been removed and must be imported again."""


def check_name(name: str) -> str:
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


class Store:
    """A folder of stored data sets, each a ``<name>.npz`` plus its ``<name>.json`` sidecar."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def npz(self, name: str) -> Path:
        return self.root / f"{name}.npz"

    def sidecar(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def save(self, name: str, data: ImageArrays, source: str, extra: dict[str, Any] | None = None) -> StoredInfo:
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

    def load(self, name: str, fix: str) -> ImageArrays | None:
        """The stored arrays, or None if absent; a set that fails its checksum is removed (DataCorrupt).

        ``fix`` is the command that recreates the set, quoted in the one-line message.
        """
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
                    arrays = {k: z[k] for k in ImageArrays.ARRAYS}
                if {k: list(v.shape) for k, v in arrays.items()} != meta["shapes"]:
                    raise ValueError("array shapes differ from the sidecar")
                return ImageArrays(classes=list(meta["classes"]), **arrays)
            except (OSError, ValueError, KeyError) as exc:
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


def datasets(data_dir: Path) -> Store:
    """Data sets the user imported (``ptk data import`` / ``ptk data download``)."""
    return Store(Path(data_dir) / "datasets")


def imagefolder_cache(data_dir: Path) -> Store:
    """Decoded copies of image folders given with ``-o imagefolder.path=...``, keyed by path and mtimes."""
    return Store(Path(data_dir) / "cache" / "imagefolder")


def to_dataset(name: str, data: ImageArrays) -> Dataset:
    return Dataset(name, torch.from_numpy(data.x_train), torch.from_numpy(data.y_train),
                   torch.from_numpy(data.x_test), torch.from_numpy(data.y_test), list(data.classes))


# --------------------------------------------------------------------------- importing

def read_cifar10(path: Path) -> ImageArrays:
    """CIFAR-10 from the official tarball, its extracted folder, or an image folder / archive of one."""
    if is_cifar_batches(path):
        return read_cifar_batches_dir(path) if path.is_dir() else read_cifar_tarball(path)
    data = read_image_folder(path, expect=("CIFAR-10", CIFAR10_CLASSES))
    if data.x_train.shape[1:] != (3, 32, 32):
        c, h, w = data.x_train.shape[1:]
        raise UsageError(f"{path} is not CIFAR-10: its images are {c}x{h}x{w}, CIFAR-10's are 3x32x32 (RGB). "
                         f"To use it under its own name: ptk data import MYNAME {path}")
    return data


def read_fashion_mnist(path: Path) -> ImageArrays:
    return read_idx_folder(path, FASHION_MNIST_CLASSES)


def read_any(name: str, path: Path) -> ImageArrays:
    """Decode PATH as the data set NAME: cifar10 and fashion-mnist have their own formats; any other
    name is an image folder (``train/<class>/*``, ``test/<class>/*``) or a tar archive of one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if name == "cifar10":
        return read_cifar10(path)
    if name == "fashion-mnist":
        return read_fashion_mnist(path)
    if not (path.is_dir() or is_tarball(path)):
        raise UsageError(f"{path} is neither a folder nor a .tar/.tar.gz archive of an image folder")
    if is_cifar_batches(path):
        raise UsageError(f"{path} is CIFAR-10 in its official python format; import it as: "
                         f"ptk data import cifar10 {path}")
    return read_image_folder(path)


def import_dataset(data_dir: Path, name: str, path: Path) -> StoredInfo:
    """Decode PATH and store it as NAME in the data directory."""
    check_name(name)
    data = read_any(name, Path(path))
    return datasets(data_dir).save(name, data, source=str(Path(path).expanduser().resolve()))


def find_debian_fashion_mnist() -> Path | None:
    for folder in DEBIAN_FASHION_MNIST:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    return None
