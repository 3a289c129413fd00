"""Fashion-MNIST (and MNIST-style data) in the idx format, gzipped or not, kept at 1 x 28 x 28."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import UsageError
from .common import SPLITS, checked_dataset

#: torchvision's names for the Fashion-MNIST labels 0..9.
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """An idx file (``magic 0 0 dtype ndim``, big-endian int32 dims, then the values); uint8 only."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise UsageError(f"{where} is a damaged gzip file ({exc}); download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UsageError(f"{where} is not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).tolist() if len(data) >= 4 + 4 * ndim else []
    body = len(data) - 4 - 4 * ndim
    if len(dims) != ndim or body != int(np.prod(dims)):
        raise UsageError(f"{where} is truncated or damaged: header says {dims}, body holds {max(body, 0)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()  # writable, for torch


def find_idx_folder(path: Path) -> Path:
    """The folder holding the four idx files: PATH itself, torchvision's FashionMNIST/raw/, or any below."""
    def has_all(folder: Path) -> bool:
        return all(_idx_file(folder, stem) is not None for stem in IDX_FILES.values())

    if path.is_dir():
        for folder in (path, path / "FashionMNIST" / "raw", path / "raw"):
            if has_all(folder):
                return folder
        for hit in sorted(path.rglob(IDX_FILES["x_train"] + "*")):
            if has_all(hit.parent):
                return hit.parent
        present = sorted(p.name for p in path.iterdir())[:8]
        raise UsageError(f"{path} does not hold the four Fashion-MNIST idx files "
                         f"({', '.join(s + '[.gz]' for s in IDX_FILES.values())}); it has: "
                         f"{', '.join(present) or 'nothing'}")
    raise UsageError(f"{path} is not a folder: give the folder holding the Fashion-MNIST *-idx?-ubyte.gz files")


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_folder(path: Path, classes: list[str]) -> Dataset:
    """Fashion-MNIST's four idx files as 1 x 28 x 28 images (kept at their native size)."""
    folder = find_idx_folder(path)
    arrays = {}
    for key, stem in IDX_FILES.items():
        f = _idx_file(folder, stem)
        arrays[key] = parse_idx(f.read_bytes(), str(f))
    for split in SPLITS:
        x = arrays[f"x_{split}"]
        if x.ndim != 3:
            raise UsageError(f"{_idx_file(folder, IDX_FILES['x_' + split])} holds {x.ndim}-d data, not N x H x W images")
        arrays[f"x_{split}"] = x[:, None]
    return checked_dataset(str(folder), classes, arrays)
