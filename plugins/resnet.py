"""Model plugin ``resnet18``: torchvision's ResNet-18 adapted to 32x32 images, with a width knob and optional
pretrained weights.

Adapted as in the study: a stride-1 stem and no max-pool, so a 32x32 image keeps enough resolution; the head
is sized to the data set's classes. ``width`` 64 is the standard network; tests and the quick preset use 16.

``weights=imagenet`` starts from torchvision's ImageNet weights (``ResNet18_Weights.IMAGENET1K_V1``), read
from torch hub's cache and downloaded there when online; ``weights=PATH`` from a state-dict file. Either way
the head is fresh, and ``stem`` says what happens to the first convolution: ``cifar`` (default) replaces it
with a fresh 3x3 one, ``imagenet`` keeps the pretrained 7x7 one at stride 1. The file's sha256 joins the
model cache key and results.json. Files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, so a crafted file cannot run code.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptk import ModelSpec, Option, UsageError, hookimpl, positive

def __getattr__(name: str):
    """``CifarResNet18`` on first use (see ``_resnet_net``: importing torchvision costs seconds)."""
    if name == "CifarResNet18":
        from ptk_plugins._resnet_net import CifarResNet18

        return CifarResNet18
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def imagenet_url() -> str:
    """Where torchvision publishes its ImageNet ResNet-18 weights (``ResNet18_Weights.IMAGENET1K_V1``)."""
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.IMAGENET1K_V1.url


def hub_file() -> Path:
    """Where torch hub keeps the ImageNet weights (``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(imagenet_url())


def weights_file(weights: str) -> Path:
    """The state-dict file ``weights`` names (``imagenet``: torch hub's cache, downloaded when missing)."""
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"-o resnet18.weights={weights}: no such file; give a state-dict file, imagenet or none")
        return path
    path = hub_file()
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(imagenet_url(), str(path), progress=True)
        except (urllib.error.URLError, OSError, ConnectionError) as exc:
            raise UsageError(
                f"-o resnet18.weights=imagenet: cannot download {imagenet_url()} ({type(exc).__name__}: {exc}); "
                f"offline, place that file as {path.name} in {path.parent} (torch hub's cache, $TORCH_HOME), "
                "or give -o resnet18.weights=PATH") from None
    return path


@functools.lru_cache(maxsize=4)
def read_weights(path: str, size: int, mtime: float) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, sha256)`` of a weights file, read once per file version (every model of a run builds)."""
    raw = Path(path).read_bytes()
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)  # the bytes just hashed
    except Exception as exc:
        raise UsageError(f"-o resnet18.weights={path}: not a state-dict file torch can read safely "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"-o resnet18.weights={path}: holds no state dict (name -> tensor)")
    return state, hashlib.sha256(raw).hexdigest()


def load_pretrained(net: nn.Module, weights: str, stem: str) -> None:
    """Copy the file's weights into ``net``: every tensor but the head's (and the first convolution's with the
    CIFAR stem); a missing or mis-shaped one is refused naming it."""
    path = weights_file(weights)
    stat = path.stat()
    state, sha = read_weights(str(path), stat.st_size, stat.st_mtime)
    skip = ("fc.",) + (("conv1.",) if stem == "cifar" else ())
    own = net.state_dict()
    wanted = {k for k in own if not k.startswith(skip)}
    missing = sorted(wanted - set(state))
    bad = sorted(k for k in wanted & set(state) if state[k].shape != own[k].shape)
    if missing or bad:
        raise UsageError(f"-o resnet18.weights={weights}: {path} does not fit ResNet-18 at width 64 "
                         f"(missing {missing[:3]}, wrong shape {bad[:3]})")
    net.load_state_dict({k: state[k] for k in wanted}, strict=False)
    net.pretrained_sha256 = sha  # read by ptk's model cache key
    net.pretrained_source = str(path)


def weights_choice(value: str) -> str | None:
    return None if value.strip() else "give none, imagenet or a path to a state-dict file"


class ResNet18(ModelSpec):
    name = "resnet18"
    description = "torchvision ResNet-18 for 32x32 images (stride-1 stem, no max-pool), width-scalable, optionally pretrained"
    options = [
        Option("width", int, 64, "channels of the first stage (64 = standard ResNet-18)", check=positive),
        Option("weights", str, "none", "none (random init), imagenet (torchvision's ImageNet weights) or a "
                                       "state-dict file PATH", check=weights_choice),
        Option("stem", str, "cifar", "first convolution: cifar (a fresh 3x3) or imagenet (the 7x7, at stride 1)",
               choices=("cifar", "imagenet")),
    ]

    def build(self, num_classes: int, image_shape: tuple[int, int, int], options: dict[str, Any]) -> nn.Module:
        weights, stem = options.get("weights", "none"), options.get("stem", "cifar")
        if weights != "none" and options["width"] != 64:
            raise UsageError(f"-o resnet18.weights={weights} needs -o resnet18.width=64 (the pretrained network's), "
                             f"got width {options['width']}")
        if weights != "none" and stem == "imagenet" and image_shape[0] != 3:
            raise UsageError(f"-o resnet18.stem=imagenet with pretrained weights needs 3-channel images, "
                             f"got {image_shape[0]}")
        from ptk_plugins._resnet_net import CifarResNet18

        net = CifarResNet18(num_classes, in_channels=image_shape[0], width=options["width"], stem=stem)
        if weights != "none":
            load_pretrained(net, weights, stem)
        return net


@hookimpl
def register_models(register):
    register(ResNet18())
