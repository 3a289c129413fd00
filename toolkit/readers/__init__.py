"""Readers for the data formats ``ptk data import`` accepts; each returns a checked :class:`ptk.Dataset`.

One module per format, plus what they share:

* :mod:`.cifar`: CIFAR-10 in its official python format (``cifar-10-python.tar.gz`` or the
  extracted ``cifar-10-batches-py/`` folder: pickled dicts of numpy arrays).
* :mod:`.idx`: Fashion-MNIST (and MNIST-style data) in the idx format, gzipped or not.
* :mod:`.imagefolder`: any ``train/<class>/*``, ``test/<class>/*`` folder, or a ``.tar``/``.tar.gz``
  of one: listing, checks and stacking.
* :mod:`.decode`: Pillow decoding, in parallel worker processes for large folders.
* :mod:`.common`: split names, tar archives, and arrays to a Dataset.

Nothing here writes files or extracts archives: tar members are read in
memory, so a hostile archive cannot write anywhere (no path traversal).
Bad input raises :class:`ptk.UsageError` naming the file and the fix. A
returned Dataset is named after the file or folder it was read from; which
data set it is, and where it is stored, is :mod:`ptk.importers`' business.
"""

from __future__ import annotations

from .cifar import (CIFAR10_CLASSES, cifar_batches_to_dataset, is_cifar_batches, read_cifar_batches_dir,
                    read_cifar_tarball)
from .common import SPLITS, is_tarball
from .decode import decode_image, decode_many
from .idx import FASHION_MNIST_CLASSES, parse_idx, read_idx_folder
from .imagefolder import read_image_folder

__all__ = [
    "CIFAR10_CLASSES", "FASHION_MNIST_CLASSES", "SPLITS", "cifar_batches_to_dataset", "decode_image",
    "decode_many", "is_cifar_batches", "is_tarball", "parse_idx", "read_cifar_batches_dir", "read_cifar_tarball",
    "read_idx_folder", "read_image_folder",
]
