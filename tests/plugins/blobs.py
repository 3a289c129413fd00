"""The ``api-blobs`` data set and the ``api-mlp`` model: three classes of 8x8 noise at different brightness
(60 training images, 30 test images) and a one-hidden-layer MLP, so in-process runs train in well under a second.
``BlobsAndMlp`` registers both; test modules subclass it and add the hooks of the attacks and defenses they test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ptk

#: "dataset.load" / "model.build" each time a plugin here is called (test_plugin_api checks every hook runs)
CALLS: list[str] = []


class Blobs(ptk.DatasetSource):
    name = "api-blobs"
    description = "three classes of 8x8 noise at different brightness"
    default_source, default_target = "a", "b"

    def load(self, data_dir: Path, options: dict[str, Any]) -> ptk.Dataset:
        CALLS.append("dataset.load")
        gen = torch.Generator().manual_seed(0)

        def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.arange(n) % 3
            x = y[:, None, None, None] * 80 + torch.randint(0, 60, (n, 3, 8, 8), generator=gen)
            return x.to(torch.uint8), y

        (xtr, ytr), (xte, yte) = split(60), split(30)
        return ptk.Dataset(self.name, xtr, ytr, xte, yte, ["a", "b", "c"])


class TinyNet(nn.Module):
    def __init__(self, classes: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 16), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyModel(ptk.ModelSpec):
    name = "api-mlp"
    description = "one hidden layer"

    def build(self, num_classes, image_shape, options) -> nn.Module:
        CALLS.append("model.build")
        return TinyNet(num_classes, image_shape)


class BlobsAndMlp:
    """Registers the ``api-blobs`` data set and the ``api-mlp`` model: other test files subclass it and add
    the hooks of the attacks and defenses they test."""

    @ptk.hookimpl
    def register_datasets(self, register):
        register(Blobs())

    @ptk.hookimpl
    def register_models(self, register):
        register(TinyModel())


def blobs_config(attack: str, defenses: list[str], **options: Any):
    """An in-process run on api-blobs with api-mlp: 3 epochs, on the CPU, with OPTIONS by plugin name."""
    from ptk.config import ExperimentConfig

    return ExperimentConfig(dataset="api-blobs", model="api-mlp", attack=attack, defenses=defenses, epochs=3,
                            lr=1e-2, batch_size=16, device="cpu", options=options)
