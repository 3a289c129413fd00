"""The network behind the ``resnet18`` plugin: torchvision's ResNet-18 with the CIFAR stem and a width knob.

A module of its own so that importing the plugin (``ptk plugins``, every command's registry) does not import
torchvision, which pulls in torch's compiler stack (about 2 s on a 2-core machine); it loads when a model is
built.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class CifarResNet18(ResNet):
    """torchvision ResNet with the CIFAR stem; ``features`` is the avg-pool output (8 x width dims)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, stem: str = "cifar") -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.inplanes = width
        kernel = 7 if stem == "imagenet" else 3  # ImageNet's 7x7, kept at stride 1 for 32x32 images
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=kernel, stride=1, padding=kernel // 2, bias=False)
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
