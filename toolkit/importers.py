"""Which reader decodes a path the user gives, by data set name; and importing into the data store.

``ptk data import NAME PATH`` and ``ptk data download`` come here: cifar10 and
fashion-mnist have their own formats (see :mod:`ptk.readers`), any other name
is an image folder. Storing the result is :mod:`ptk.datastore`'s job.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .data import Dataset
from .datastore import StoredInfo, check_name, stored_datasets
from .errors import UsageError
from .readers import (CIFAR10_CLASSES, FASHION_MNIST_CLASSES, is_cifar_batches, is_tarball, read_cifar_batches_dir,
                      read_cifar_tarball, read_idx_folder, read_image_folder)

#: Where Debian's ``dataset-fashion-mnist`` package puts the official idx files.
DEBIAN_FASHION_MNIST = [Path("/usr/share/datasets/fashion-mnist")]


def read_cifar10(path: Path) -> Dataset:
    """CIFAR-10 from the official tarball, its extracted folder, or an image folder / archive of one."""
    if is_cifar_batches(path):
        return read_cifar_batches_dir(path) if path.is_dir() else read_cifar_tarball(path)
    data = read_image_folder(path, expect=("CIFAR-10", CIFAR10_CLASSES))
    if data.image_shape != (3, 32, 32):
        c, h, w = data.image_shape
        raise UsageError(f"{path} is not CIFAR-10: its images are {c}x{h}x{w}, CIFAR-10's are 3x32x32 (RGB). "
                         f"To use it under its own name: ptk data import MYNAME {path}")
    return data


def read_fashion_mnist(path: Path) -> Dataset:
    """Fashion-MNIST from the folder holding its four idx files (or torchvision's root above it)."""
    return read_idx_folder(path, FASHION_MNIST_CLASSES)


def read_dataset(name: str, path: Path) -> Dataset:
    """Decode PATH as the data set NAME (and name it so): cifar10 and fashion-mnist have their own formats;
    any other name is an image folder (``train/<class>/*``, ``test/<class>/*``) or a tar archive of one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if name == "cifar10":
        data = read_cifar10(path)
    elif name == "fashion-mnist":
        data = read_fashion_mnist(path)
    elif not (path.is_dir() or is_tarball(path)):
        raise UsageError(f"{path} is neither a folder nor a .tar/.tar.gz archive of an image folder")
    elif is_cifar_batches(path):
        raise UsageError(f"{path} is CIFAR-10 in its official python format; import it as: "
                         f"ptk data import cifar10 {path}")
    else:
        data = read_image_folder(path)
    return replace(data, name=name)


def import_dataset(data_dir: Path, name: str, path: Path) -> StoredInfo:
    """Decode PATH and store it as NAME in the data directory."""
    check_name(name)
    data = read_dataset(name, Path(path))
    return stored_datasets(data_dir).save(name, data, source=str(Path(path).expanduser().resolve()))


def find_debian_fashion_mnist() -> Path | None:
    """The folder of Debian's ``dataset-fashion-mnist`` files, if that package is installed."""
    for folder in DEBIAN_FASHION_MNIST:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    return None
