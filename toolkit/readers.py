"""Readers for the data formats ``ptk data import`` accepts; each returns :class:`ImageArrays`.

* CIFAR-10 in its official python format: ``cifar-10-python.tar.gz`` or the
  extracted ``cifar-10-batches-py/`` folder (pickled dicts of numpy arrays).
* Fashion-MNIST (and MNIST-style data) in the idx format, gzipped or not.
* Any image folder: ``train/<class>/*`` and ``test/<class>/*``, as a folder or
  a ``.tar``/``.tar.gz`` of one, decoded with Pillow.

Nothing here writes files or extracts archives: tar members are read in
memory, so a hostile archive cannot write anywhere (no path traversal).
Bad input raises :class:`ptk.UsageError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import io
import multiprocessing
import os
import pickle
import posixpath
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np

from .options import UsageError
from .train import progress

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: torchvision's names for the Fashion-MNIST labels 0..9.
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SPLITS = ("train", "test")


@dataclass
class ImageArrays:
    """A decoded data set as numpy arrays: images uint8 (N, C, H, W), labels int64, class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    ARRAYS: ClassVar[tuple[str, ...]] = ("x_train", "y_train", "x_test", "y_test")

    def __post_init__(self) -> None:
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"x_{split} must be uint8 N x C x H x W, got {x.dtype} {x.shape}")
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(f"y_{split} must hold one label per image: {len(x)} images, shape {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"y_{split} has labels outside 0..{len(self.classes) - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"train images are {self.x_train.shape[1:]} but test images {self.x_test.shape[1:]}")
        self.y_train = self.y_train.astype(np.int64)
        self.y_test = self.y_test.astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAYS}


# --------------------------------------------------------------------------- CIFAR-10 (official python format)

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


CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def cifar_batches_to_arrays(files: dict[str, bytes], where: str) -> ImageArrays:
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
    try:
        return ImageArrays(classes=list(CIFAR10_CLASSES), **out)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None


def read_cifar_batches_dir(folder: Path) -> ImageArrays:
    """The extracted ``cifar-10-batches-py/`` folder (or a folder holding it, as torchvision's root does)."""
    if not (folder / "batches.meta").exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    return cifar_batches_to_arrays(files, str(folder))


def read_cifar_tarball(path: Path) -> ImageArrays:
    """The official ``cifar-10-python.tar.gz``, read in memory without extracting."""
    files: dict[str, bytes] = {}
    with _open_tar(path) as tf:
        for m in tf:
            if m.isfile() and posixpath.basename(m.name) in {"batches.meta", *sum(CIFAR_BATCHES.values(), [])}:
                files[posixpath.basename(m.name)] = tf.extractfile(m).read()
    return cifar_batches_to_arrays(files, str(path))


def is_cifar_batches(path: Path) -> bool:
    """Whether PATH is the official python format (batches.meta) rather than an image folder."""
    if path.is_dir():
        return (path / "batches.meta").exists() or (path / "cifar-10-batches-py" / "batches.meta").exists()
    if is_tarball(path):
        with _open_tar(path) as tf:
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


# --------------------------------------------------------------------------- idx (MNIST / Fashion-MNIST)

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


def read_idx_folder(path: Path, classes: list[str]) -> ImageArrays:
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
    try:
        return ImageArrays(classes=list(classes), **arrays)
    except ValueError as exc:
        raise UsageError(f"{folder}: {exc}") from None


# --------------------------------------------------------------------------- image folders

def is_tarball(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"{path} is not a readable tar archive ({exc})") from None


@dataclass
class Listing:
    """An image folder before decoding: its root (for messages), the class folders of each
    split (empty ones included), and a stream of (split, class, shown path, bytes) per image."""

    where: str
    folders: dict[str, set[str]]
    count: int
    images: Iterator[tuple[str, str, str, bytes | memoryview]]


def _hidden(parts: Iterable[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _place(parts: tuple[str, ...], shown: str) -> tuple[str, str]:
    """(split, class) of a file at ``root/parts`` where ``parts[0]`` is train or test."""
    if len(parts) < 3:
        raise UsageError(f"{shown} is not inside a class folder: images go in {parts[0]}/<class>/")
    return parts[0], parts[1]


def _dir_root(path: Path) -> Path:
    """PATH, or its single subfolder when PATH is where an archive was extracted (cifar10-jpeg/)."""
    if any((path / s).is_dir() for s in SPLITS):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not _hidden([p.name])]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in SPLITS):
        return subdirs[0]
    raise UsageError(f"{path} has no train/ or test/ folder: an image folder needs "
                     f"{path}/train/<class>/* and {path}/test/<class>/*")


def list_dir(path: Path) -> Listing:
    root = _dir_root(path)
    folders: dict[str, set[str]] = {s: set() for s in SPLITS}
    files: list[tuple[str, str, Path]] = []
    for split in SPLITS:
        base = root / split
        if not base.is_dir():
            continue
        folders[split] = {p.name for p in base.iterdir() if p.is_dir() and not _hidden([p.name])}
        for f in sorted(base.rglob("*")):
            parts = f.relative_to(root).parts
            if f.is_file() and not _hidden(parts):
                files.append((*_place(parts, str(f)), f))
    images = ((split, label, str(f), f.read_bytes()) for split, label, f in files)
    return Listing(str(root), folders, len(files), images)


def _decompressed(path: Path) -> bytes:
    """The whole tar stream in memory: slicing members out of it is far cheaper than extractfile()."""
    import bz2
    import lzma

    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        if raw[:3] == b"BZh":
            return bz2.decompress(raw)
        if raw[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(raw)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise UsageError(f"{path} is a damaged archive ({exc}); download or pack it again") from None
    return raw


def list_tar(path: Path) -> Listing:
    """An archived image folder, decompressed in memory; nothing is extracted to disk."""
    data = _decompressed(path)
    try:
        members = tarfile.open(fileobj=io.BytesIO(data), mode="r:").getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"{path} is not a readable tar archive ({exc})") from None
    roots: set[tuple[str, ...]] = set()
    folders: dict[str, set[str]] = {s: set() for s in SPLITS}
    files: list[tuple[str, str, str, tarfile.TarInfo]] = []
    for m in members:
        parts = tuple(p for p in m.name.split("/") if p not in ("", "."))
        idx = next((i for i, p in enumerate(parts) if p in SPLITS), None)
        if idx is None or _hidden(parts) or not (m.isfile() or m.isdir()):
            continue  # a README or licence beside the folder, or a link
        roots.add(parts[:idx])
        rel = parts[idx:]
        if m.isdir() and len(rel) >= 2:
            folders[rel[0]].add(rel[1])
        elif m.isfile():
            split, label = _place(rel, f"{path}:{m.name}")
            folders[split].add(label)
            files.append((split, label, f"{path}:{m.name}", m))
    if len(roots) > 1:
        shown = sorted("/".join(r) + "/" for r in roots)
        raise UsageError(f"{path} holds more than one image folder ({', '.join(shown)}); pack one per archive")
    if not roots:
        raise UsageError(f"{path} has no train/ or test/ folder: an image-folder archive holds "
                         f"[ROOT/]train/<class>/* and [ROOT/]test/<class>/*")
    root = "/".join(next(iter(roots)))
    view = memoryview(data)
    images = ((split, label, shown, view[m.offset_data:m.offset_data + m.size])
              for split, label, shown, m in files)
    return Listing(f"{path}" + (f" ({root}/)" if root else ""), folders, len(files), images)


def decode_image(data: bytes | memoryview, shown: str) -> np.ndarray:
    """H x W x C uint8: greyscale stays 1 channel, everything else becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("RGB", "L"):
                im = im.convert("L") if im.mode in ("1", "LA", "I", "I;16", "F") else im.convert("RGB")
            arr = np.asarray(im)
    except UnidentifiedImageError:
        raise UsageError(f"cannot read image {shown}: not an image format Pillow knows; remove or replace "
                         f"that file") from None
    except Image.DecompressionBombError as exc:  # a tiny file that would decode to gigabytes
        raise UsageError(f"cannot read image {shown}: {str(exc).splitlines()[0]} (Pillow's decompression-bomb "
                         "guard); remove or replace that file") from None
    except (OSError, ValueError, SyntaxError) as exc:  # a known format, but damaged or truncated
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot read image {shown}: {reason}; remove or replace that file") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image_folder(path: Path, expect: tuple[str, list[str]] | None = None) -> ImageArrays:
    """An image folder (directory or tar archive) decoded to arrays; classes sorted by name.

    Sorted class names give CIFAR-10 its standard label order (airplane=0 ... truck=9),
    as torchvision's ImageFolder does. Within a class, images are sorted by file name.
    ``expect`` = (data set name, its classes) refuses other classes before decoding anything.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if is_tarball(path):
        listing = list_tar(path)
    elif path.is_dir():
        listing = list_dir(path)
    else:
        raise UsageError(f"{path} is neither a folder nor a .tar/.tar.gz archive of an image folder")
    check_classes(listing)
    classes = sorted(listing.folders["train"])
    if expect is not None and classes != expect[1]:
        name, wanted = expect
        raise UsageError(f"{path} is not {name}: its classes are {', '.join(classes[:12])}"
                         f"{', ...' if len(classes) > 12 else ''}; {name}'s are {', '.join(wanted)}. "
                         f"To use it under its own name: ptk data import MYNAME {path}")
    found = list(listing.images)
    pixels = decode_many([(shown, data) for _, _, shown, data in found], f"decoding {path.name}")
    decoded = [(split, label, shown, a) for (split, label, shown, _), a in zip(found, pixels)]
    return assemble(decoded, classes, listing.where)


#: Images per task sent to a decoding worker, and the fewest images worth starting workers for.
CHUNK, PARALLEL_FROM = 1000, 4000


def decode_workers(n_images: int) -> int:
    """Worker processes for decoding: one per usable core (at most 8); none for small folders, nor off
    Linux, where fork (which starts workers without re-importing torch) is unavailable or unsafe."""
    if n_images < PARALLEL_FROM or not sys.platform.startswith("linux"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def _decode_chunk(chunk: list[tuple[str, bytes]]) -> list[np.ndarray]:
    return [decode_image(data, shown) for shown, data in chunk]


def decode_many(items: list[tuple[str, bytes | memoryview]], desc: str) -> list[np.ndarray]:
    """Decode images in order, in parallel worker processes when there are many (Pillow's per-image
    cost is mostly Python, so threads would not help). The first unreadable image raises UsageError."""
    workers = decode_workers(len(items))
    if workers == 1:
        return [decode_image(data, shown) for shown, data in progress(items, desc, len(items))]
    chunks = [[(shown, bytes(data)) for shown, data in items[i:i + CHUNK]] for i in range(0, len(items), CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        done = (a for chunk in pool.map(_decode_chunk, chunks) for a in chunk)
        return list(progress(done, desc, len(items)))


def check_classes(listing: Listing) -> None:
    """Both splits present, with the same class folders (before any decoding)."""
    where, folders = listing.where, listing.folders
    for split in SPLITS:
        if not folders[split]:
            raise UsageError(f"{where} has no {split}/<class>/ folders: an image folder needs both "
                             f"train/<class>/* and test/<class>/*")
    only_train = sorted(folders["train"] - folders["test"])
    only_test = sorted(folders["test"] - folders["train"])
    if only_train or only_test:
        parts = ([f"{', '.join(map(repr, only_train))} only in train/"] if only_train else []) + \
                ([f"{', '.join(map(repr, only_test))} only in test/"] if only_test else [])
        raise UsageError(f"{where}: every class needs images in both train/ and test/, but found "
                         f"{'; '.join(parts)}")


def assemble(decoded: list[tuple[str, str, str, np.ndarray]], classes: list[str], where: str) -> ImageArrays:
    """Stack decoded images into arrays after checking every class has images and all share one size."""
    for split in SPLITS:
        have = {label for s, label, _, _ in decoded if s == split}
        empty = [c for c in classes if c not in have]
        if empty:
            raise UsageError(f"{where}: class {empty[0]!r} has no images in {split}/ (every class needs images "
                             f"in both train/ and test/)")
    sizes: dict[tuple[int, int], str] = {}
    for _, _, shown, a in decoded:
        sizes.setdefault(a.shape[:2], shown)
    if len(sizes) > 1:
        shown = "; ".join(f"{rel} is {w}x{h}" for (h, w), rel in list(sizes.items())[:3])
        raise UsageError(f"{where} mixes image sizes ({shown}); resize every image to one size first")
    c = max(a.shape[2] for *_, a in decoded)  # any colour image makes the set RGB
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        kept = sorted((r for r in decoded if r[0] == split), key=lambda r: (index[r[1]], r[2]))
        x = np.stack([a if a.shape[2] == c else np.repeat(a, c, axis=2) for *_, a in kept])
        out[f"x_{split}"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out[f"y_{split}"] = np.array([index[label] for _, label, _, _ in kept], dtype=np.int64)
    return ImageArrays(classes=classes, **out)
