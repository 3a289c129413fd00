"""The one container for image data: uint8 image tensors plus labels.

Plugins see it, the readers return it and the data store saves and loads it,
so its checks (shapes, one label per image, labels within the classes) are
written once, here. Images stay uint8 (N, C, H, W) so a full CIFAR-10 (150 MB)
sits on the GPU; conversion to float, normalisation and augmentation happen
per batch on the device (see :mod:`ptk.augment`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch

from .errors import UsageError


@dataclass
class Dataset:
    """Train and test images (uint8, N x C x H x W) with integer labels and class names.

    Construction refuses inconsistent data with a ValueError whose message starts with ``name``
    (readers name a set after the file it came from, so the message says where the problem is).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    #: The four arrays, in the order (and under the names) the data store saves them.
    ARRAYS: ClassVar[tuple[str, ...]] = ("x_train", "y_train", "x_test", "y_test")

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"{self.name}: x_{split} must be uint8 N x C x H x W, got {x.dtype} {tuple(x.shape)}")
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(f"{self.name}: y_{split} must hold one label per image: {len(x)} images, "
                                 f"shape {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(f"{self.name}: y_{split} has labels outside 0..{len(self.classes) - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images are {tuple(self.x_train.shape[1:])} but test images "
                             f"{tuple(self.x_test.shape[1:])}")
        self.y_train = self.y_train.long()
        self.y_test = self.y_test.long()

    @classmethod
    def from_numpy(cls, name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray, classes: list[str]) -> "Dataset":
        """A data set over decoded numpy arrays, sharing their memory (no copy of 150 MB of pixels)."""
        x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test))
        return cls(name, x_tr, y_tr, x_te, y_te, list(classes))

    def arrays(self) -> dict[str, np.ndarray]:
        """The four tensors as numpy arrays on the CPU, by name (what the data store writes)."""
        return {k: getattr(self, k).detach().cpu().numpy() for k in self.ARRAYS}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def class_index(self, name: str) -> int:
        """Index of a class given by name (or by its index as a string)."""
        if name in self.classes:
            return self.classes.index(name)
        if name.isdigit() and int(name) < len(self.classes):
            return int(name)
        raise UsageError(f"unknown class {name!r} in {self.name}; classes are: {', '.join(self.classes)}")

    def fingerprint(self) -> str:
        """sha256 over images, labels and class names: the data set's identity in cache keys."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for t in (self.x_train, self.y_train, self.x_test, self.y_test):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            h.update("\n".join(self.classes).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
            _fingerprint=self._fingerprint,
        )

    def subset(self, train: int | None, test: int | None, seed: int) -> "Dataset":
        """Stratified subsets of train and/or test (None keeps a split whole)."""
        x_train, y_train, x_test, y_test = self.x_train, self.y_train, self.x_test, self.y_test
        for flag, asked, have in (("--subset", train, len(y_train)), ("--test-subset", test, len(y_test))):
            if asked is not None and asked > have:
                logging.getLogger("ptk").warning("ptk: %s %d is more than the %d images %s has; using all %d",
                                                 flag, asked, have, self.name, have)
        if train is not None and train < len(y_train):
            if train < self.num_classes:
                raise UsageError(f"--subset {train} is smaller than the {self.num_classes} classes of {self.name}")
            keep = stratified_indices(y_train, train, seed)
            x_train, y_train = x_train[keep], y_train[keep]
        if test is not None and test < len(y_test):
            if test < self.num_classes:
                raise UsageError(f"--test-subset {test} is smaller than the {self.num_classes} classes of {self.name}")
            keep = stratified_indices(y_test, test, seed + 1)
            x_test, y_test = x_test[keep], y_test[keep]
        return Dataset(self.name, x_train, y_train, x_test, y_test, list(self.classes))


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices keeping class proportions (largest remainder), sorted, reproducible from ``seed``."""
    y = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: n - take.sum()]:
        take[i] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return torch.from_numpy(np.sort(np.concatenate(picked))).to(labels.device)
