"""Model plugin ``resnet18``: torchvision's ResNet-18 adapted to 32x32 images, with a width knob.

Adapted as in the study: a 3x3 stride-1 stem and no max-pool, so a 32x32 image
keeps enough resolution; the head is sized to the data set's classes.
``width`` 64 is the standard network; tests and the quick preset use 16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from ptk import ModelSpec, Option, hookimpl, positive


class CifarResNet18(ResNet):
    """torchvision ResNet with the CIFAR stem; ``features`` is the avg-pool output (8 x width dims)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity()
        if width != 64:  # rebuild the stages at the requested width with torchvision's own builder
            self.layer1 = self._make_layer(BasicBlock, width, 2)
            self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
        self.fc = nn.Linear(width * 8, num_classes)
        for m in self.modules():  # torchvision's initialisation, reapplied to the replaced layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResNet18(ModelSpec):
    name = "resnet18"
    description = "torchvision ResNet-18 for 32x32 images (3x3 stem, no max-pool), width-scalable"
    options = [Option("width", int, 64, "channels of the first stage (64 = standard ResNet-18)", check=positive)]

    def build(self, num_classes: int, image_shape: tuple[int, int, int], options: dict[str, Any]) -> nn.Module:
        return CifarResNet18(num_classes, in_channels=image_shape[0], width=options["width"])


@hookimpl
def register_models(register):
    register(ResNet18())
