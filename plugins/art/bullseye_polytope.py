"""Attack plugin ``art-bullseye-polytope``: ART's ``BullseyePolytopeAttackPyTorch`` (Aghakhani et al.,
"Bullseye Polytope: A Scalable Clean-Label Poisoning Attack with Improved Transferability", EuroS&P 2021)
aimed at ptk's target image.

Clean-label: ``budget`` training images of the target class (the bases, drawn with the run's seed) are
perturbed, each by at most ``epsilon`` (L-inf), so that the mean of their penultimate-layer features under the
clean model (the centre, "bullseye", of the polytope they span) lands on the target image's features. A model
trained on them learns that the target's region of feature space is the target class. Labels are not changed.

ART's optimisation loop is kept (Adam with ART's betas, its learning-rate decay, its projection onto the
epsilon ball and the [0, 1] box after every step). ptk adapts:

* the surrogate is a copy of the run's clean model as an ART PyTorchClassifier taking floats in [0, 1]
  (:func:`ptk_plugins.art._poison.surrogate`) whose layer ``"features"`` is the penultimate layer. ART
  names a PyTorch model's top-level children in registration order, so on a plain ResNet index
  ``len(layer_names) - 1`` would be the classifier head; ptk passes the layer by name, also because ART 1.20's
  ``get_activations`` registers one more forward hook on every call made with an index (never with a name);
* ``epsilon`` is in grey levels of 255 (ART's is in [0, 1]); poisons come back as uint8
  (:func:`ptk_plugins.art._poison.to_uint8`);
* **ART 1.20.1's loss ignores the target** (ptk's workaround is the default, ``loss=bullseye``): its
  ``poison`` takes the "target" features from the *bases* passed to it, not from the ``target`` given to the
  constructor (which is stored and never read), and its ``loss_from_center`` pairs each poison's features
  with its own base's, comparing the mean of a feature vector (a scalar) with a vector. The poisons then
  move for no reason tied to the target: the same bases give the same poisons for any target. ptk's
  ``loss=bullseye`` replaces only ``loss_from_center``, for the call, with the paper's loss:
  ``|| mean_i f(poison_i) - f(target) || / || f(target) ||`` on the penultimate features ``f``.
  ``loss=art`` runs ART's loss unchanged.
* ``max_iter`` defaults far below ART's 4000 (20 poisons take 10-25 s on one CPU thread on the quick
  preset); ART's other parameters keep ART's defaults (its ``dropout`` is never used by ART 1.20).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, UsageError, hookimpl, positive, positive_up_to
from ptk_plugins.art._bridge import art_images, art_seeded, art_version, quiet_art
from ptk_plugins.art._poison import EPSILON_OPTION, LEVELS, class_indices, perturbation_stats, surrogate, to_uint8

#: The surrogate's penultimate layer, by name (see FeaturesLast)
FEATURE_LAYER = "features"


def choose_bases(labels: torch.Tensor, target_class: int, budget: int, seed: int) -> torch.Tensor:
    """``budget`` target-class training indices drawn with a CPU generator seeded by ``seed``, sorted."""
    pool = class_indices(labels, target_class)  # clean-label: the attack perturbs images of the target class
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=gen)[:budget].to(pool.device)].sort().values


def bullseye_loss(target_features: list[torch.Tensor]):
    """The paper's loss in ART's ``loss_from_center`` signature: for each surrogate, the distance from the
    mean of the poisons' features to the target's features, relative to the target's norm; averaged."""

    def loss_from_center(subs_net_list, target_feat_list, poison_batch, net_repeat, end2end, feature_layer):
        total = 0.0
        for net, target in zip(subs_net_list, target_features):
            feats = net.get_activations(poison_batch(), layer=feature_layer, framework=True)
            centre = feats.flatten(1).mean(0)
            total = total + torch.norm(centre - target) / torch.norm(target)
        return total / len(subs_net_list)

    return loss_from_center


@contextmanager
def art_loss_replaced(loss_from_center) -> Iterator[None]:
    """ART's module-level ``loss_from_center`` (looked up on every iteration of ``poison``) replaced for a block."""
    from art.attacks.poisoning import bullseye_polytope_attack as module  # ART only when run (see _bridge)

    original = module.loss_from_center
    module.loss_from_center = loss_from_center
    try:
        yield
    finally:
        module.loss_from_center = original


def target_features(classifier, x_target: np.ndarray) -> torch.Tensor:
    """The target's penultimate features (the mean over several targets, as ART's docstring promises)."""
    feats = classifier.get_activations(x_target, layer=FEATURE_LAYER, batch_size=len(x_target))
    return torch.from_numpy(np.asarray(feats).reshape(len(x_target), -1).mean(0)).to(classifier.device)


def bullseye_polytope(classifier, x_bases: np.ndarray, x_target: np.ndarray, options: dict[str, Any],
                      seed: int) -> np.ndarray:
    """ART's BullseyePolytopeAttackPyTorch on float images in [0, 1] (bases N x C x H x W, target 1 x C x H x W):
    the poisons, floats in [0, 1]. ``options["loss"]``: ``bullseye`` (the paper's loss, ptk's fix) or ``art``."""
    from art.attacks.poisoning import BullseyePolytopeAttackPyTorch  # ART only when run (see _bridge)

    attack = BullseyePolytopeAttackPyTorch(classifier, x_target, FEATURE_LAYER, max_iter=options["max_iter"],
                                           learning_rate=options["learning_rate"],
                                           epsilon=options["epsilon"] / LEVELS, verbose=False)
    labels = np.zeros(len(x_bases), dtype=np.int64)  # ART hands y back unchanged; clean-label keeps ptk's own
    with art_seeded(seed):  # ART draws no random numbers here today; seeded in case a version does
        if options["loss"] == "art":
            poisons, _ = attack.poison(x_bases, labels)
        else:
            with art_loss_replaced(bullseye_loss([target_features(classifier, x_target)])):
                poisons, _ = attack.poison(x_bases, labels)
    return poisons


def polytope_distance(classifier, poisons: np.ndarray, x_target: np.ndarray) -> float:
    """The paper's loss for ``poisons``: how far their feature centre is from the target's, relative."""
    feats = classifier.get_activations(poisons.astype(np.float32), layer=FEATURE_LAYER, batch_size=128)
    centre = np.asarray(feats).reshape(len(poisons), -1).mean(0)
    target = target_features(classifier, x_target).cpu().numpy()
    return float(np.linalg.norm(centre - target) / np.linalg.norm(target))


class ArtBullseyePolytope(Attack):
    name = "art-bullseye-polytope"
    description = ("ART's Bullseye Polytope: clean-label perturbations of target-class training images whose "
                   "mean features land on the target image's")
    api_version = 2
    goal = "target"
    options = [
        Option("budget", int, 20, "target-class training images to perturb (the polytope's vertices; the "
               "paper: 5)", check=positive),
        EPSILON_OPTION,
        Option("max_iter", int, 300, "optimisation steps (ART: 4000)", check=positive_up_to(4000, "ART's default")),
        Option("learning_rate", float, 0.04, "Adam's learning rate (ART's default)", check=positive),
        Option("loss", str, "bullseye", "bullseye: the paper's loss on the target's features (ptk's fix); art: "
               "ART 1.20's loss_from_center unchanged, which ignores the target", choices=("bullseye", "art")),
    ]

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        pool = len(class_indices(data.y_train, target))
        if options["budget"] > pool:
            raise UsageError(f"art-bullseye-polytope.budget={options['budget']} is larger than the {pool} training "
                             f"images of the target class {data.classes[target]!r} it perturbs; lower "
                             f"-o art-bullseye-polytope.budget or raise --subset")

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        t, data = ctx.target, ctx.data
        bases = choose_bases(data.y_train, t.target_class, options["budget"], ctx.seed)
        x_bases = art_images(data.x_train[bases])
        x_target = art_images(t.image)
        with quiet_art():
            classifier = surrogate(ctx.clean_model, tuple(data.image_shape), data.num_classes, ctx.device)
            before = polytope_distance(classifier, x_bases, x_target)
            poisons = bullseye_polytope(classifier, x_bases, x_target, options, ctx.seed)
            x_train = data.x_train.clone()
            x_train[bases] = to_uint8(poisons, data.x_train[bases], options["epsilon"])
            after = polytope_distance(classifier, art_images(x_train[bases]), x_target)
        return Poisoning(
            y_train=data.y_train.clone(), poison_indices=bases, x_train=x_train,
            details={"art_version": art_version(), **options, "art_epsilon": options["epsilon"] / LEVELS,
                     "feature_layer": FEATURE_LAYER, "pool_size": len(class_indices(data.y_train, t.target_class)),
                     "poisoned": len(bases), "target_distance_before": round(before, 6),
                     "target_distance_after": round(after, 6), **perturbation_stats(data.x_train[bases],
                                                                                      x_train[bases])})


@hookimpl
def register_attacks(register):
    register(ArtBullseyePolytope())
