"""Dataset plugins ``cifar10``, ``fashion-mnist`` and ``imagefolder``.

All three read decoded uint8 arrays from ptk's data directory (through
:func:`ptk.stored_datasets` and :func:`ptk.imagefolder_cache`); none decodes
images on a second run. When data is absent they raise :class:`ptk.DataMissing`
naming where they looked and the command that fixes it, before any training
starts. They use only ``ptk``'s public API, as a third-party data set would.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ptk import (DEBIAN_FASHION_MNIST, DataCorrupt, DataMissing, Dataset, DatasetSource, Option, UsageError,
                 find_debian_fashion_mnist, hookimpl, imagefolder_cache, is_tarball, read_dataset, read_image_folder,
                 stored_datasets)

log = logging.getLogger("ptk")


class Cifar10(DatasetSource):
    name = "cifar10"
    description = "CIFAR-10 (50k/10k 32x32 colour images, 10 classes), imported once with `ptk data import`"
    default_source = "deer"
    default_target = "dog"

    def load(self, data_dir: Path, options: dict[str, Any]) -> Dataset:
        fix = "ptk data import cifar10 PATH"
        data = stored_datasets(data_dir).load("cifar10", fix=fix)
        if data is None:
            raise DataMissing(
                f"CIFAR-10 is not in the data directory (looked for {stored_datasets(data_dir).npz('cifar10')}). "
                f"Import it with `{fix}` (PATH: cifar-10-python.tar.gz, its cifar-10-batches-py/ folder, or an "
                f"image folder / .tar.gz of train/<class>/*, test/<class>/*), or fetch it with "
                f"`ptk data download cifar10`")
        return data


class FashionMnist(DatasetSource):
    name = "fashion-mnist"
    description = ("Fashion-MNIST (60k/10k 28x28 grey images, 10 classes): imported, or Debian's "
                   "dataset-fashion-mnist files found automatically")
    # Two look-alike classes, as deer/dog are for CIFAR-10.
    default_source = "Shirt"
    default_target = "T-shirt/top"

    def load(self, data_dir: Path, options: dict[str, Any]) -> Dataset:
        fix = "ptk data import fashion-mnist PATH"
        store = stored_datasets(data_dir)
        data = store.load("fashion-mnist", fix=fix)
        if data is None:
            debian = find_debian_fashion_mnist()
            if debian is None:
                looked = ", ".join(str(p) for p in [store.npz("fashion-mnist"), *DEBIAN_FASHION_MNIST])
                raise DataMissing(
                    f"Fashion-MNIST not found (looked in {looked}). Get it with `apt-get install "
                    f"dataset-fashion-mnist` (Debian/Ubuntu), `{fix}` (the folder with the four *-idx?-ubyte.gz "
                    f"files), or `ptk data download fashion-mnist`")
            data = read_dataset("fashion-mnist", debian)  # 47 MB of idx: decoding takes under a second
        return data


def _fingerprint(path: Path) -> str:
    """Identity of an image folder for the decode cache: its resolved path and every file's size and mtime.

    A changed, added or removed image changes the key, so the cache never serves stale pixels.
    """
    h = hashlib.sha256(str(path).encode())
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"\n{f.relative_to(path)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    else:
        st = path.stat()
        h.update(f"\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


class ImageFolder(DatasetSource):
    name = "imagefolder"
    description = "any train/<class>/*, test/<class>/* image folder or .tar.gz of one (decoded once, cached)"
    options = [
        Option("path", str, "", "image folder or .tar/.tar.gz archive of one (train/<class>/*, test/<class>/*)"),
        Option("name", str, "", "a data set stored with `ptk data import NAME PATH` (instead of path)"),
    ]

    def load(self, data_dir: Path, options: dict[str, Any]) -> Dataset:
        path, name = options["path"], options["name"]
        if bool(path) == bool(name):
            raise UsageError("the imagefolder data set needs exactly one of -o imagefolder.path=FOLDER "
                             "(an image folder or .tar.gz of one) or -o imagefolder.name=NAME (a stored import)")
        if name:
            return self._stored(data_dir, name)
        folder = Path(path).expanduser().resolve()
        if not folder.exists():
            raise DataMissing(f"imagefolder.path {folder} does not exist; give a folder with train/<class>/* "
                              f"and test/<class>/*, or a .tar.gz of one")
        if not (folder.is_dir() or is_tarball(folder)):
            raise UsageError(f"imagefolder.path {folder} is neither a folder nor a .tar/.tar.gz archive")
        cache = imagefolder_cache(data_dir)
        key = _fingerprint(folder)
        try:
            data = cache.load(key, fix="nothing to do, ptk decodes the folder again now")
        except DataCorrupt as exc:  # a cache, not the user's data: say so and rebuild it
            log.warning("%s", exc)
            data = None
        if data is None:
            data = read_image_folder(folder)
            for old in cache.list():  # one cached copy per folder: drop the stale ones
                if old.source == str(folder):
                    cache.remove(old.name)
            cache.save(key, data, source=str(folder))
        return replace(data, name=f"imagefolder:{folder.name}")

    def _stored(self, data_dir: Path, name: str) -> Dataset:
        store = stored_datasets(data_dir)
        data = store.load(name, fix=f"ptk data import {name} PATH")  # refuses an invalid name first
        if data is None:
            have = ", ".join(i.name for i in store.list()) or "none"
            raise DataMissing(f"no data set {name!r} in {store.root} (stored: {have}); import it with "
                              f"`ptk data import {name} PATH`")
        return data


@hookimpl
def register_datasets(register):
    register(Cifar10())
    register(FashionMnist())
    register(ImageFolder())
