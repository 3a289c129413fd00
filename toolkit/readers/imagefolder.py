"""Image folders: ``train/<class>/*`` and ``test/<class>/*`` as a folder or a ``.tar``/``.tar.gz`` of one.

Listing finds every image (and refuses a malformed folder) before any is
decoded; tar members are sliced out of the archive in memory, so nothing is
extracted and a hostile archive cannot write anywhere (no path traversal).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import UsageError
from .common import SPLITS, checked_dataset, is_tarball
from .decode import decode_many


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


def assemble(decoded: list[tuple[str, str, str, np.ndarray]], classes: list[str], where: str) -> Dataset:
    """Stack decoded images into a Dataset named WHERE after checking every class has images and all share one
    size (these checks name the folder and the file; the Dataset's own checks then cannot fail)."""
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
    return checked_dataset(where, classes, out)


def read_image_folder(path: Path, expect: tuple[str, list[str]] | None = None) -> Dataset:
    """An image folder (directory or tar archive) decoded to a Dataset named after it; classes sorted by name.

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
