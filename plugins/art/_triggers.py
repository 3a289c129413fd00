"""ART's backdoor triggers as ptk uses them (``art-backdoor``, ``art-clean-label-backdoor``) and the class
options of ptk's ART backdoors (``class_option``: a source or target class given by name or index).

ART's perturbation functions are kept: ``add_pattern_bd`` (a four-pixel checkerboard corner, the default) or
``add_single_bd`` (one pixel). ptk adapts the layout (ptk's images are N x C x H x W; ``add_pattern_bd`` is
told ``channels_first=True``, ``add_single_bd`` has no such switch and gets N x H x W x C) and the pixel value
(255 on ptk's uint8 images, ART's default of 1 being for images in [0, 1]).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ptk import Dataset, Option, Trigger, UsageError

#: ART's perturbation function for each value of the ``trigger`` option
PERTURBATIONS = {"pattern": "add_pattern_bd", "pixel": "add_single_bd"}
#: ptk's images are uint8: the trigger's pixels are white
PIXEL_VALUE = 255
#: The ``trigger`` option of the backdoors that stamp ART's trigger
TRIGGER_OPTION = Option("trigger", str, "pattern", "ART's perturbation: pattern (add_pattern_bd, a 4-pixel "
                        "checkerboard corner) or pixel (add_single_bd, one pixel)", choices=tuple(PERTURBATIONS))


def stamp(x: np.ndarray, trigger: str, pixel_value: int | float = PIXEL_VALUE) -> np.ndarray:
    """ART's ``trigger`` perturbation on a batch N x C x H x W (returns a new array, same layout): uint8 with
    the default ``pixel_value`` of 255, or floats in [0, 1] with ``pixel_value=1``."""
    from art.attacks.poisoning.perturbations import add_pattern_bd, add_single_bd  # ART only when run (_bridge)

    if trigger == "pattern":
        return add_pattern_bd(x, pixel_value=pixel_value, channels_first=True)
    # add_single_bd indexes a 4-d batch as N x H x W x C and has no channels_first switch
    return np.ascontiguousarray(add_single_bd(x.transpose(0, 2, 3, 1), pixel_value=pixel_value).transpose(0, 3, 1, 2))


def apply_trigger(x: torch.Tensor, trigger: str) -> torch.Tensor:
    """:func:`stamp` on a torch uint8 batch, back on ``x``'s device (a :class:`ptk.Trigger`'s ``apply``)."""
    return torch.from_numpy(stamp(x.cpu().numpy(), trigger)).to(x.device)


def art_trigger(trigger: str, target_class: int) -> Trigger:
    """ART's ``trigger`` perturbation on ptk's uint8 test images as the :class:`ptk.Trigger` of a backdoor to
    ``target_class``; its ``description`` names ART's function and parameters."""
    description = f"art {PERTURBATIONS[trigger]}(distance=2, pixel_value={PIXEL_VALUE})"
    return Trigger(apply=functools.partial(apply_trigger, trigger=trigger), target_class=target_class,
                   description=description)


def check_trigger_fits(owner: str, image_shape: tuple[int, ...]) -> None:
    """Refuse images too small for ART's pattern, which reaches 4 pixels in from the bottom-right corner."""
    h, w = image_shape[1:]
    if min(h, w) < 4:
        raise UsageError(f"{owner} needs images of at least 4 x 4 pixels, not {h} x {w}")


def poison_pool(labels: torch.Tensor, target_class: int) -> torch.Tensor:
    """Training indices a dirty-label backdoor may poison: every image not already of the target class."""
    return (labels != target_class).nonzero().squeeze(1)


def class_option(data: Dataset, option: str, default: int, owner: str = "art-backdoor",
                 key: str = "target_class") -> int:
    """The class index that plugin ``owner``'s class option ``key`` (``source_class``, ``target_class``) names:
    a class name or index; empty gives ``default`` (e.g. the run's target class)."""
    if option == "":
        return default
    try:
        return data.class_index(option)  # a name, or an index written as digits
    except UsageError:
        pass
    raise UsageError(f"{owner}.{key}={option!r} is neither a class name nor an index "
                     f"0..{data.num_classes - 1}; classes are: {', '.join(data.classes)}")
