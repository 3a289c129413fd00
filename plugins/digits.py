"""Dataset plugin ``digits``: scikit-learn's 1,797 real handwritten digits, no download needed.

The 8x8 grey images are upscaled to 32x32 and repeated to three channels so the
CIFAR pipeline (ResNet-18, crop-and-flip augmentation) runs on them unchanged.
A stratified quarter is held out as the test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ptk import Dataset, DatasetSource, Option, hookimpl


class Digits(DatasetSource):
    name = "digits"
    description = "scikit-learn's 1,797 handwritten digits at 32x32x3 (ships with scikit-learn)"
    options = [Option("test_fraction", float, 0.25, "fraction held out as the test set",
                      check=lambda v: None if 0 < v < 1 else "must be between 0 and 1")]
    default_source = "1"
    default_target = "7"

    def load(self, data_dir: Path, options: dict[str, Any]) -> Dataset:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        raw = load_digits()
        x = torch.from_numpy(raw.images.astype(np.float32) / 16.0)[:, None]
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
        y = torch.from_numpy(raw.target.astype(np.int64))
        tr, te = train_test_split(np.arange(len(y)), test_size=options["test_fraction"], stratify=raw.target,
                                  random_state=0)
        tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
        return Dataset("digits", x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)])


@hookimpl
def register_datasets(register):
    register(Digits())
