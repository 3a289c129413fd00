"""Attack plugin ``art-sleeper-agent``: ART's ``SleeperAgentAttack`` (Souri et al., "Sleeper Agent: Scalable Hidden
Trigger Backdoors for Neural Networks Trained from Scratch", NeurIPS 2022) on ptk data.

A clean-label backdoor by gradient matching: ART perturbs ``percent_poison`` of the target class's training
images (within an L-inf ``epsilon``, labels unchanged) so that the training gradient they cause on the clean
model points the way of the gradient of "source-class images carrying the patch -> target class". A model
trained on them should send patched images to the target class; ptk measures that as every model's
``backdoor_asr`` with the patch stamped in the bottom-right corner of the test images.

ART's algorithm is kept (``SleeperAgentAttack.poison``, its trials, its Adam-on-signed-gradients optimisation
and its learning-rate schedule). ptk adapts only what ART cannot know, and works around ART 1.20's pitfalls:

* the model is the run's clean model, a ptk ``Network`` that normalises its input itself, as an ART
  ``PyTorchClassifier`` with ART's *identity* standardisation ``preprocessing=(0, 1)``. SleeperAgent needs a
  ``StandardisationMeanStdPyTorch`` preprocessing (it raises ``ValueError`` otherwise), and a per-channel one
  makes its ``epsilon`` an array, which ``GradientMatchingAttack._check_params`` cannot compare
  (``if self.epsilon <= 0``: "truth value of an array ... is ambiguous"); the identity keeps ART's budget in
  [0, 1] pixel units;
* images as float32 in [0, 1] (N x C x H x W), labels one-hot float32 (ART's cross-entropy gets them as class
  probabilities); ART's output is rounded back to uint8 (``rint(255 x)``);
* the trigger images are up to ``triggers`` training images of the source class (never test images: those
  measure the attack) and the patch is a black-and-white checkerboard of ``patch_size`` pixels;
* ``indices_target`` must be a numpy array (ART indexes it with an array; a list, as its type hint says,
  fails). Without ``model_retrain`` ART only reads the target class, so ptk hands it just those images;
* randomness: ART draws from numpy's global RNG (which images), Python's ``random`` (patch positions) and
  torch's global RNG (the initial noise); all three are seeded with the run's seed for the call and restored;
* the learning-rate schedule is ART's, with its milestones (100, 150, 200, 220 of 250 epochs) scaled to
  ``max_epochs``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, Trigger, UsageError, hookimpl, positive, share

from ptk_plugins.art._bridge import (art_device_type, art_images, art_one_hot, art_seeded, art_version,
                                     from_art_images, gradient_matching_device, quiet_art)
from ptk_plugins.art._poison import ART_RATES, class_indices, lr_schedule, poison_count
from ptk_plugins.art._triggers import class_option

NAME = "art-sleeper-agent"
#: the ``selection`` option's values and ART's ``selection_strategy`` for them (ART: "random", else max gradient norm)
SELECTIONS = {"random": "random", "max-norm": "max-norm"}



def checkerboard(channels: int, size: int) -> np.ndarray:
    """The patch: uint8 (channels, size, size), 255 where row + column is even, else 0."""
    grid = (np.add.outer(np.arange(size), np.arange(size)) % 2 == 0).astype(np.uint8) * 255
    return np.repeat(grid[None], channels, axis=0)


def apply_patch(x: torch.Tensor, patch: np.ndarray) -> torch.Tensor:
    """The patch in the bottom-right corner of a uint8 batch N x C x H x W (ART's ``fixed`` placement); a new tensor."""
    out = x.clone()
    size = patch.shape[1]
    out[:, :, -size:, -size:] = torch.from_numpy(patch).to(x.device)
    return out


def schedule(max_epochs: int) -> tuple[list[float], list[int]]:
    """ART's default learning-rate schedule with its milestones scaled from 250 epochs to ``max_epochs``."""
    return lr_schedule(ART_RATES[0], max_epochs)


def sleeper_classifier(network: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device):
    """ART PyTorchClassifier over ``network`` (floats in [0, 1] in, logits out) with the identity standardisation
    SleeperAgent requires; its optimizer (Adam, lr 1e-3) only serves ART's retraining, which clones it."""
    from art.estimators.classification import PyTorchClassifier  # ART only when the attack runs (see _bridge)

    return PyTorchClassifier(model=network, loss=nn.CrossEntropyLoss(), input_shape=image_shape,
                             nb_classes=num_classes, optimizer=torch.optim.Adam(network.parameters(), lr=1e-3),
                             clip_values=(0.0, 1.0), preprocessing=(0.0, 1.0),
                             device_type=art_device_type(device))


def art_attack(classifier, patch: np.ndarray, indices_target: np.ndarray, source: int, target: int,
               options: dict[str, Any], device: torch.device):
    """ART's SleeperAgentAttack with ptk's options (``patch`` uint8, handed to ART in [0, 1])."""
    from art.attacks.poisoning import SleeperAgentAttack  # ART only when the attack runs (see _bridge)

    return SleeperAgentAttack(
        classifier, percent_poison=options["percent_poison"], patch=art_images(torch.from_numpy(patch)),
        indices_target=indices_target, epsilon=options["epsilon"], max_trials=options["max_trials"],
        max_epochs=options["max_epochs"], learning_rate_schedule=schedule(options["max_epochs"]),
        batch_size=options["batch_size"], clip_values=(0.0, 1.0), verbose=0,
        patching_strategy=options["patching"], selection_strategy=SELECTIONS[options["selection"]],
        retraining_factor=options["retraining_factor"], model_retrain=options["model_retrain"],
        model_retraining_epoch=options["model_retraining_epoch"], class_source=source, class_target=target,
        device_name=device.type, retrain_batch_size=options["batch_size"])


def trigger_images(x_train: torch.Tensor, y_train: torch.Tensor, source: int, count: int, seed: int) -> torch.Tensor:
    """Up to ``count`` training images of the source class (a seeded choice when there are more), uint8."""
    members = class_indices(y_train, source).cpu()
    if len(members) > count:
        members = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))[:count]].sort().values
    return x_train[members.to(x_train.device)]


def sleeper_agent(network: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, source: int, target: int,
                  num_classes: int, options: dict[str, Any], seed: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, poison indices)``: ART's SleeperAgentAttack on the training set with ``network`` as its model;
    images stay uint8 and labels are not changed."""
    y_all = y_train.cpu().numpy()
    members = np.flatnonzero(y_all == target)
    if options["model_retrain"]:  # ART retrains its substitute on the whole (poisoned) training set
        x_art, y_art, indices_target = art_images(x_train), art_one_hot(y_all, num_classes), members
    else:  # ART reads only the target class's images
        x_art = art_images(x_train[torch.from_numpy(members).to(x_train.device)])
        y_art, indices_target = art_one_hot(y_all[members], num_classes), np.arange(len(members))
    x_trigger = art_images(trigger_images(x_train, y_train, source, options["triggers"], seed))
    y_trigger = art_one_hot([target] * len(x_trigger), num_classes)
    patch = checkerboard(x_train.shape[1], options["patch_size"])
    classifier = sleeper_classifier(network, tuple(x_train.shape[1:]), num_classes, device)
    attack = art_attack(classifier, patch, indices_target, source, target, options, device)
    try:
        with art_seeded(seed):
            poisoned, _ = attack.poison(x_trigger, y_trigger, x_art, y_art, x_art, y_art)
    finally:
        for p in network.parameters():  # ART's weight gradients leave .grad on the model
            p.grad = None
        network.eval()
    picked = np.unique(indices_target[attack.get_poison_indices()])
    untouched = np.ones(len(x_art), dtype=bool)
    untouched[picked] = False
    if not np.array_equal(poisoned[untouched], x_art[untouched]):
        raise RuntimeError("ART modified images outside the ones it reports as poisoned")
    chosen = torch.from_numpy(picked if options["model_retrain"] else members[picked])
    out = x_train.clone()
    out[chosen.to(out.device)] = torch.from_numpy(from_art_images(poisoned[picked])).to(out.device)
    return out, chosen.to(y_train.device)


class ArtSleeperAgent(Attack):
    name = NAME
    description = ("ART's Sleeper Agent (Souri et al. 2022): gradient-matching perturbations on target-class "
                   "images so that a patch sends source-class images to the target class; labels kept")
    api_version = 2
    goal = "backdoor"
    options = [
        Option("percent_poison", float, 0.1, "share of the target class's training images to perturb (ART has "
               "no default; the paper's 1% of CIFAR-10 is 10% of a class)", check=share),
        Option("epsilon", float, 0.063, "L-inf budget on images in [0, 1] (16/255 as in the paper; ART's "
               "default 0.1)", check=share),
        Option("max_trials", int, 1, "restarts, the best kept (ART's default 8; 1 keeps it cheap on a CPU)",
               check=positive),
        Option("max_epochs", int, 30, "optimisation epochs per trial (ART's default 250; ART's learning-rate "
               "milestones are scaled to it)", check=positive),
        Option("batch_size", int, 128, "ART's batch size for the poisons (and its retraining)", check=positive),
        Option("patch_size", int, 8, "side of the checkerboard patch in pixels (the paper's 8 on CIFAR-10)",
               check=positive),
        Option("patching", str, "random", "where ART puts the patch on the trigger images while crafting: random "
               "(ART's default) or fixed (bottom-right, where ptk stamps it on test images)",
               choices=("random", "fixed")),
        Option("selection", str, "random", "which target-class images ART perturbs: random (ART's default) or "
               "max-norm (largest gradient norm on the clean model, the paper's selection)", choices=tuple(SELECTIONS)),
        Option("triggers", int, 100, "source-class training images ART patches to build the gradient to match "
               "(at most; all go through the model in one batch)", check=positive),
        Option("model_retrain", bool, False, "ART's retraining of its substitute model during the optimisation "
               "(ART's default off; see the docs: ART 1.20 keeps optimising against the first model)"),
        Option("retraining_factor", int, 1, "with model_retrain: rounds of optimisation, ART retraining its model "
               "between them (so factor - 1 retrainings; ART's default 1)", check=positive),
        Option("model_retraining_epoch", int, 1, "with model_retrain: epochs of each retraining (ART's default)",
               check=positive),
        Option("source_class", str, "", "the class whose patched images should go to the target class (name or "
               "index; empty: the run's source class, --source or the data set's default)"),
        Option("target_class", str, "", "the class patched images should go to and whose images are perturbed "
               "(name or index; empty: the run's target class)"),
    ]

    def classes(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> tuple[int, int]:
        return (class_option(data, options["source_class"], source, owner=NAME, key="source_class"),
                class_option(data, options["target_class"], target, owner=NAME))

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        src, tgt = self.classes(data, source, target, options)
        if src == tgt:
            raise UsageError(f"{NAME}: source and target class are both {data.classes[tgt]!r}; set -o "
                             f"{NAME}.source_class or -o {NAME}.target_class (or --source/--target) apart")
        n = len(class_indices(data.y_train, tgt))
        if poison_count(options["percent_poison"], n) < 1:
            raise UsageError(f"{NAME}.percent_poison={options['percent_poison']} of the {n} training images of "
                             f"class {data.classes[tgt]!r} perturbs none (ART takes int(percent_poison x {n})); "
                             f"raise -o {NAME}.percent_poison or --subset")
        if not (data.y_train == src).any():
            raise UsageError(f"{NAME}: no training image of the source class {data.classes[src]!r} to build the "
                             f"trigger from; pick another -o {NAME}.source_class or a larger --subset")
        h, w = data.image_shape[1:]
        if options["patch_size"] > min(h, w):
            raise UsageError(f"{NAME}.patch_size={options['patch_size']} is larger than the {h} x {w} images; "
                             f"pick -o {NAME}.patch_size={min(h, w)} or less")
        if options["model_retrain"] and options["retraining_factor"] < 2:
            raise UsageError(f"{NAME}: model_retrain with retraining_factor=1 retrains nothing (ART retrains between "
                             f"its retraining_factor rounds of optimisation); set -o {NAME}.retraining_factor=2 or more")
        if options["model_retrain"] and options["max_trials"] > 1:
            raise UsageError(f"{NAME}: model_retrain with max_trials={options['max_trials']}: ART 1.20 grows "
                             "max_epochs in place while retraining, so the trials after the first optimise for the "
                             f"wrong number of epochs (rounds of none); use -o {NAME}.max_trials=1 with model_retrain")
        if options["model_retrain"] and options["max_epochs"] // options["retraining_factor"] < 1:
            raise UsageError(f"{NAME}.retraining_factor={options['retraining_factor']} leaves ART less than one "
                             f"epoch per retraining round of max_epochs={options['max_epochs']}; raise -o "
                             f"{NAME}.max_epochs or lower retraining_factor")

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        src, tgt = self.classes(ctx.data, ctx.target.source_class, ctx.target.target_class, options)
        if ctx.device.type != gradient_matching_device().type:
            raise UsageError(f"{NAME}: ART 1.20's gradient matching runs on {gradient_matching_device().type!r} whenever "
                             f"it is available, but this run's model is on {ctx.device.type!r}; run with --device "
                             f"{gradient_matching_device().type}")
        with quiet_art():
            x, chosen = sleeper_agent(ctx.clean_model, ctx.data.x_train, ctx.data.y_train, src, tgt,
                                      ctx.data.num_classes, options, ctx.seed, ctx.device)
        patch = checkerboard(ctx.data.image_shape[0], options["patch_size"])
        description = f"{options['patch_size']}x{options['patch_size']} checkerboard patch, bottom-right"
        trigger = Trigger(apply=functools.partial(apply_patch, patch=patch), target_class=tgt, description=description)
        n = len(class_indices(ctx.data.y_train, tgt))
        details = {"art_version": art_version(), "patch": description,
                   "backdoor_source_class": ctx.data.classes[src], "backdoor_target_class": ctx.data.classes[tgt],
                   "learning_rate_schedule": schedule(options["max_epochs"]),
                   "trigger_images": len(trigger_images(ctx.data.x_train, ctx.data.y_train, src, options["triggers"],
                                                        ctx.seed)),
                   "target_class_size": n, "poisoned": len(chosen)}
        return Poisoning(y_train=ctx.data.y_train.clone(), poison_indices=chosen, x_train=x, trigger=trigger,
                         details=details)


@hookimpl
def register_attacks(register):
    register(ArtSleeperAgent())
