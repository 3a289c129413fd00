"""Attack plugin ``art-clean-label-backdoor``: ART's ``PoisoningAttackCleanLabelBackdoor`` (Turner, Tsipras and
Madry, "Clean-Label Backdoor Attacks", 2018) on ptk data.

ART draws ``pp_poison`` x (the number of training images of the target class) of those images, makes them hard
to classify with untargeted L-inf PGD on a proxy classifier, stamps the backdoor trigger on them and keeps their
(correct) labels. A model trained on them can only fit these hard images through the trigger, so it learns
"trigger -> target class"; ptk measures that as every model's ``backdoor_asr`` on triggered test images.

ART's algorithm is kept: ``PoisoningAttackCleanLabelBackdoor`` with ART's ``PoisoningAttackBackdoor`` and
perturbation function (``add_pattern_bd`` or ``add_single_bd``, as in ``art-backdoor``) and ART's PGD. ptk
adapts only what ART cannot know:

* the proxy classifier is the run's clean model, as an ART ``PyTorchClassifier`` on floats in [0, 1]
  (:func:`ptk_plugins.art._bridge.art_classifier`; ptk's model normalises internally);
* images: ART gets the target class's training images as float32 in [0, 1] (N x C x H x W, the trigger's
  pixel value 1), and its output is rounded back to uint8 (``rint(255 x)``), so a poisoned pixel is within
  ``eps`` + 0.5/255 of the clean one; the trigger's pixels are exactly 255;
* labels: one-hot, every image given being of the target class (ART's selection among the images of the
  target class then equals its selection in the whole training set; tested);
* randomness: ART draws its selection from numpy's global RNG (``np.random.choice``), seeded here with the
  run's seed for the call and restored afterwards; ptk re-derives the same draw to know which images ART
  modified. ART draws *with replacement*, so fewer distinct images than ``int(pp_poison x n)`` are poisoned
  (``details``: ``draws`` and ``poisoned``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, UsageError, hookimpl, non_negative, positive
from ptk_plugins.art._bridge import (art_classifier, art_images, art_one_hot, art_version, from_art_images,
                                     numpy_global_seed, quiet_art)
from ptk_plugins.art._poison import class_indices, poison_count
from ptk_plugins.art._triggers import TRIGGER_OPTION, art_trigger, check_trigger_fits, stamp, class_option

NAME = "art-clean-label-backdoor"
#: the ``norm`` option's values and what ART's PGD gets for them
NORMS = {"inf": np.inf, "2": 2}


def open_share(value: float) -> str | None:
    """ART refuses ``pp_poison`` outside (0, 1)."""
    return None if 0 < value < 1 else f"must be in (0, 1) (ART refuses 0 and 1), got {value}"


def unit_share(value: float) -> str | None:
    return None if 0 <= value <= 1 else f"must be in [0, 1] (images are scaled to [0, 1]), got {value}"


def art_selection(n_target: int, pp_poison: float) -> np.ndarray:
    """The positions (among the target class's images, in order) ART's ``poison`` draws with numpy's global
    RNG in its current state: ``np.random.choice(target_indices, int(pp_poison * n))``, with replacement;
    sorted and without repeats."""
    return np.unique(np.random.choice(np.arange(n_target), poison_count(pp_poison, n_target)))


def clean_label_backdoor(classifier, x_train: torch.Tensor, y_train: torch.Tensor, target_class: int,
                         num_classes: int, options: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(images, poison indices, draws)``: ART's PoisoningAttackCleanLabelBackdoor with ``classifier`` as its
    proxy on the training images of ``target_class``; images stay uint8 and labels are not changed."""
    # ART only when the attack runs (see _bridge)
    from art.attacks.poisoning import PoisoningAttackBackdoor, PoisoningAttackCleanLabelBackdoor

    members = class_indices(y_train, target_class).cpu()
    x = art_images(x_train[members.to(x_train.device)])
    backdoor = PoisoningAttackBackdoor(functools.partial(stamp, trigger=options["trigger"], pixel_value=1.0))
    attack = PoisoningAttackCleanLabelBackdoor(backdoor, classifier, art_one_hot(target_class, num_classes),
                                               pp_poison=options["pp_poison"], norm=NORMS[options["norm"]],
                                               eps=options["eps"], eps_step=options["eps_step"],
                                               max_iter=options["max_iter"])
    attack.attack.set_params(verbose=False)  # ART's PGD (its public set_params): no progress bar per call
    with numpy_global_seed(seed):
        picked = art_selection(len(members), options["pp_poison"])
    with numpy_global_seed(seed):
        poisoned, _ = attack.poison(x, y=art_one_hot(np.full(len(members), target_class), num_classes))
    untouched = np.ones(len(members), dtype=bool)
    untouched[picked] = False
    if not np.array_equal(poisoned[untouched], x[untouched]):  # ART drew otherwise than re-derived
        raise RuntimeError("ART modified images outside the selection ptk re-derived from its RNG")
    out = x_train.clone()
    chosen = members[picked]
    out[chosen.to(out.device)] = torch.from_numpy(from_art_images(poisoned[picked])).to(out.device)
    return out, chosen.to(y_train.device), poison_count(options["pp_poison"], len(members))


class ArtCleanLabelBackdoor(Attack):
    name = NAME
    description = ("ART's clean-label backdoor (Turner et al. 2018): PGD-harden a share of the target class's "
                   "training images on the clean model, stamp a trigger, keep the labels")
    api_version = 2
    goal = "backdoor"
    options = [
        TRIGGER_OPTION,
        Option("pp_poison", float, 0.33, "ART's share of the target class's training images to draw (with "
               "replacement) and poison (ART's default)", check=open_share),
        Option("norm", str, "inf", "PGD's norm: inf (ART's default) or 2", choices=tuple(NORMS)),
        Option("eps", float, 0.063, "PGD's L-inf budget on images in [0, 1] (16/255, Turner et al.'s largest; "
               "ART's default 0.3)", check=unit_share),
        Option("eps_step", float, 0.016, "PGD's step (eps/4; ART's default 0.1)", check=positive),
        Option("max_iter", int, 10, "PGD's iterations (ART's default 100; 10 keeps it cheap on a CPU)",
               check=non_negative),
        Option("target_class", str, "", "the class triggered images should go to and whose images are poisoned "
               "(name or index; empty: the run's target class, --target or the data set's default)"),
    ]

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        cls = class_option(data, options["target_class"], target, owner=NAME)
        n = len(class_indices(data.y_train, cls))
        if poison_count(options["pp_poison"], n) < 1:
            raise UsageError(f"{NAME}.pp_poison={options['pp_poison']} of the {n} training images of class "
                             f"{data.classes[cls]!r} draws none (ART takes int(pp_poison x {n})); raise -o "
                             f"{NAME}.pp_poison or --subset")
        check_trigger_fits(NAME, tuple(data.image_shape))

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        cls = class_option(ctx.data, options["target_class"], ctx.target.target_class, owner=NAME)
        with quiet_art():
            proxy = art_classifier(ctx.clean_model, tuple(ctx.data.image_shape), ctx.data.num_classes, ctx.device)
            x, chosen, drawn = clean_label_backdoor(proxy, ctx.data.x_train, ctx.data.y_train, cls,
                                                    ctx.data.num_classes, options, ctx.seed)
        for p in ctx.clean_model.parameters():  # ART's loss gradients leave .grad on the proxy's weights
            p.grad = None
        trigger = art_trigger(options["trigger"], cls)
        n = len(class_indices(ctx.data.y_train, cls))
        details = {"art_version": art_version(), "perturbation": trigger.description,
                   "pgd": {"norm": options["norm"], "eps": options["eps"], "eps_step": options["eps_step"],
                           "max_iter": options["max_iter"], "num_random_init": 0},
                   "pp_poison": options["pp_poison"], "backdoor_target_class": ctx.data.classes[cls],
                   "target_class_size": n, "draws": drawn, "poisoned": len(chosen)}
        return Poisoning(y_train=ctx.data.y_train.clone(), poison_indices=chosen, x_train=x, trigger=trigger,
                         details=details)


@hookimpl
def register_attacks(register):
    register(ArtCleanLabelBackdoor())
