"""CIFAR-10 in its official python format: ``cifar-10-python.tar.gz`` or its ``cifar-10-batches-py/`` folder.

The batches are Python-2 pickles, so they are read with an unpickler that
allows numpy's array constructors and nothing else.
"""

from __future__ import annotations

import io
import pickle
import posixpath
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import UsageError
from .common import SPLITS, checked_dataset, is_tarball, open_tar

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _numpy_reconstruct() -> Callable:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class CifarUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR-10 batches and nothing else.

    Those batches are Python-2 pickles of dicts holding lists, byte strings and
    one numpy array, so the only globals they need are numpy's array
    constructors. Every other global (``os.system``, ``builtins.eval``...) is
    refused, so a crafted "batch" cannot run code. ``encoding='bytes'`` is the
    documented way to read these Python-2 pickles; it is used only here.
    """

    ALLOWED = {"_reconstruct", "ndarray", "dtype"}

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") and name in self.ALLOWED:
            return _numpy_reconstruct() if name == "_reconstruct" else getattr(np, name)
        raise UsageError(f"{self.where} is not an official CIFAR-10 batch: it asks to load {module}.{name}, "
                         f"which ptk refuses to run")


def load_cifar_pickle(data: bytes, where: str) -> dict:
    """One official batch file's dict (keys are bytes, as the Python-2 pickle wrote them)."""
    try:
        obj = CifarUnpickler(io.BytesIO(data), where).load()
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{where} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{where} is not a CIFAR-10 batch (it holds a {type(obj).__name__}, not a dict)")
    return obj


def cifar_batches_to_dataset(files: dict[str, bytes], where: str) -> Dataset:
    """Decode the official files (``batches.meta``, ``data_batch_1..5``, ``test_batch``) given by name."""
    needed = ["batches.meta", *CIFAR_BATCHES["train"], *CIFAR_BATCHES["test"]]
    missing = [n for n in needed if n not in files]
    if missing:
        raise UsageError(f"{where} lacks {', '.join(missing)}: the official cifar-10-batches-py/ folder holds "
                         f"{', '.join(needed)}")
    meta = load_cifar_pickle(files["batches.meta"], f"{where}/batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    if names != CIFAR10_CLASSES:
        raise UsageError(f"{where}/batches.meta names the classes {names}, not CIFAR-10's {CIFAR10_CLASSES}")
    out: dict[str, np.ndarray] = {}
    for split, batch_names in CIFAR_BATCHES.items():
        xs, ys = [], []
        for name in batch_names:
            batch = load_cifar_pickle(files[name], f"{where}/{name}")
            x, y = batch.get(b"data"), batch.get(b"labels")
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
                raise UsageError(f"{where}/{name}: b'data' must be a uint8 array of N x 3072 pixels")
            if y is None or len(y) != len(x):
                raise UsageError(f"{where}/{name}: b'labels' must hold one label per image ({len(x)})")
            xs.append(x.reshape(-1, 3, 32, 32))  # rows are stored channel-major: R plane, G plane, B plane
            ys.append(np.asarray(y, dtype=np.int64))
        out[f"x_{split}"], out[f"y_{split}"] = np.concatenate(xs), np.concatenate(ys)
    return checked_dataset(where, CIFAR10_CLASSES, out)


def read_cifar_batches_dir(folder: Path) -> Dataset:
    """The extracted ``cifar-10-batches-py/`` folder (or a folder holding it, as torchvision's root does)."""
    if not (folder / "batches.meta").exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    return cifar_batches_to_dataset(files, str(folder))


def read_cifar_tarball(path: Path) -> Dataset:
    """The official ``cifar-10-python.tar.gz``, read in memory without extracting."""
    files: dict[str, bytes] = {}
    with open_tar(path) as tf:
        for m in tf:
            if m.isfile() and posixpath.basename(m.name) in {"batches.meta", *sum(CIFAR_BATCHES.values(), [])}:
                files[posixpath.basename(m.name)] = tf.extractfile(m).read()
    return cifar_batches_to_dataset(files, str(path))


def is_cifar_batches(path: Path) -> bool:
    """Whether PATH is the official python format (batches.meta) rather than an image folder."""
    if path.is_dir():
        return (path / "batches.meta").exists() or (path / "cifar-10-batches-py" / "batches.meta").exists()
    if is_tarball(path):
        with open_tar(path) as tf:
            try:
                for m in tf:  # stops at the first telling member: no need to read the whole archive
                    parts = m.name.split("/")
                    if parts[-1] == "batches.meta":
                        return True
                    if any(p in SPLITS for p in parts):
                        return False
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise UsageError(f"{path} is a damaged tar archive ({exc}); download it again") from None
    return False
