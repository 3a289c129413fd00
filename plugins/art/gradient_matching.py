"""Attack plugin ``art-gradient-matching``: ART's ``GradientMatchingAttack`` (Geiping et al., "Witches' Brew:
Industrial Scale Data Poisoning via Gradient Matching", ICLR 2021) aimed at ptk's target image.

Clean-label: ART picks a share of the training images *of the target class* and adds to each a perturbation
of at most ``epsilon`` (L-inf) whose training gradient on the clean model points the way the gradient of
"the target image is of the target class" does (1 - cosine similarity of the two parameter gradients, the
"B score"). A model trained on them is pushed, as a side effect of fitting correctly labelled images, towards
classifying the target image as the target class. Labels are not changed.

ART's algorithm is kept (its optimiser, tanh-bounded noise, sign-Adam steps, learning-rate schedule shape,
restarts and best-of-trials choice). ptk adapts what ART cannot know or does not return:

* the surrogate is a copy of the run's clean model as an ART PyTorchClassifier taking floats in [0, 1]
  (:func:`ptk_plugins.art._poison.surrogate`), on the device ART 1.20 itself picks for this attack
  (CUDA whenever torch sees one, whatever the classifier's device);
* ``epsilon`` is in grey levels of 255 (ART's is in [0, 1]: ART gets ``epsilon / 255``);
* ART returns the whole training set but not which images it perturbed: ptk records each trial's B score,
  replays ART's own draws of each trial's images (numpy's global RNG, seeded from the run's seed) and
  returns the best trial's images as ``poison_indices``, checked against what actually changed;
* the poisons come back as uint8 (:func:`ptk_plugins.art._poison.to_uint8`): perturbations under half
  a grey level vanish;
* ``max_epochs`` and ``max_trials`` default far below ART's (250, 8) so the attack runs in under a minute
  on one CPU thread; ART's learning-rate milestones (100, 150, 200, 220 of 250 epochs) are scaled to
  ``max_epochs``, so ``max_epochs=250`` with ``learning_rate=0.1`` is exactly ART's default schedule.
  ART 1.20 applies each rate until the milestone *after* its own (0.1 until epoch 150, not 100, and so
  on); ptk keeps that, it is ART's algorithm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptk import Attack, AttackContext, Dataset, Option, Poisoning, UsageError, hookimpl, positive, positive_up_to, share
from ptk_plugins.art._bridge import (art_images, art_seeded, art_training_arrays, art_version,
                                     gradient_matching_device, quiet_art)
from ptk_plugins.art._poison import (EPSILON_OPTION, LEVELS, class_indices, lr_schedule, perturbation_stats,
                                     poison_count, surrogate, to_uint8)


def gradient_matching(classifier, x_train: np.ndarray, y_train: np.ndarray, x_trigger: np.ndarray,
                      target_class: int, options: dict[str, Any],
                      seed: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """ART's GradientMatchingAttack on float images in [0, 1]: ``(poisoned x_train, indices ART perturbed
    (sorted), B score of each trial)``. numpy's and torch's global RNGs are seeded with ``seed`` for the call
    and restored afterwards."""
    from art.attacks.poisoning import GradientMatchingAttack  # ART only when the attack runs (see _bridge)

    attack = GradientMatchingAttack(
        classifier, percent_poison=options["percent_poison"], epsilon=options["epsilon"] / LEVELS,
        max_trials=options["max_trials"], max_epochs=options["max_epochs"],
        learning_rate_schedule=lr_schedule(options["learning_rate"], options["max_epochs"]),
        batch_size=options["batch_size"], clip_values=(0.0, 1.0), verbose=0)
    scores: list[float] = []
    optimise = attack._poison__pytorch  # ART's per-trial optimisation; wrapped only to record its B score

    def recording(x_poison, y_poison):
        poisoned, b_score = optimise(x_poison, y_poison)
        scores.append(float(np.mean(b_score)))
        return poisoned, b_score

    attack._poison__pytorch = recording
    y_trigger = np.array([target_class])
    with art_seeded(seed):
        x_out, _ = attack.poison(x_trigger, y_trigger, x_train, y_train)
    with art_seeded(seed):  # ART's only draws from numpy: one permutation of the target class per trial
        pool = np.flatnonzero(y_train == target_class)
        n = poison_count(options["percent_poison"], len(x_train))
        trials = [np.random.permutation(pool)[:n] for _ in scores]
    best, best_score = None, np.finfo(np.float32).max  # ART's choice: the first trial with the lowest B score
    for trial, score in zip(trials, scores):
        if score < best_score:
            best, best_score = trial, score
    chosen = np.sort(best)
    changed = np.flatnonzero((x_out != x_train).reshape(len(x_train), -1).any(1))
    if not np.isin(changed, chosen).all():
        raise RuntimeError(f"ART perturbed {len(np.setdiff1d(changed, chosen))} training images outside the "
                           "poison ptk replayed from its draws; cannot say which images are poison")
    return x_out, chosen, scores


def check_budget(data: Dataset, target: int, options: dict[str, Any]) -> None:
    n, pool = poison_count(options["percent_poison"], len(data.y_train)), len(class_indices(data.y_train, target))
    name = data.classes[target]
    if n < 1:
        raise UsageError(f"art-gradient-matching.percent_poison={options['percent_poison']} of {len(data.y_train)} "
                         f"training images poisons none (ART takes int(percent_poison x training images)); raise "
                         f"-o art-gradient-matching.percent_poison to at least {1 / len(data.y_train):.4g}")
    if n > pool:
        raise UsageError(f"art-gradient-matching.percent_poison={options['percent_poison']} asks for {n} images of "
                         f"the target class {name!r}, which has {pool} training images (ART poisons only images of "
                         f"the target class); lower -o art-gradient-matching.percent_poison to at most "
                         f"{pool / len(data.y_train):.4g}")


class ArtGradientMatching(Attack):
    name = "art-gradient-matching"
    description = ("ART's gradient matching (Witches' Brew): clean-label perturbations of target-class training "
                   "images that make the target image go to the target class")
    api_version = 2
    goal = "target"
    options = [
        Option("percent_poison", float, 0.05, "share of ALL training images to perturb (ART's percent_poison, "
               "no default in ART), drawn from the target class's images", check=share),
        EPSILON_OPTION,
        Option("max_trials", int, 1, "restarts, the lowest B score kept (ART: 8)", check=positive_up_to(8, "ART's default")),
        Option("max_epochs", int, 40, "optimisation epochs per trial (ART: 250)", check=positive_up_to(250, "ART's default")),
        Option("learning_rate", float, 0.1, "first rate of ART's schedule (ART: 0.1); as ART 1.20 applies it, "
               "divided by 10 from 60% of max_epochs, 100 from 80%, 1000 from 88%", check=positive),
        Option("batch_size", int, 128, "poisons per optimisation step (ART: 128)", check=positive),
    ]

    def check(self, data: Dataset, source: int, target: int, options: dict[str, Any]) -> None:
        check_budget(data, target, options)

    def poison(self, ctx: AttackContext, options: dict[str, Any]) -> Poisoning:
        t, data = ctx.target, ctx.data
        x, y = art_training_arrays(data)
        x_trigger = art_images(t.image)
        with quiet_art():
            classifier = surrogate(ctx.clean_model, tuple(data.image_shape), data.num_classes, gradient_matching_device())
            x_out, chosen, scores = gradient_matching(classifier, x, y, x_trigger, t.target_class, options, ctx.seed)
        idx = torch.from_numpy(chosen).to(data.y_train.device)
        x_train = data.x_train.clone()
        x_train[idx] = to_uint8(x_out[chosen], data.x_train[idx], options["epsilon"])
        rates, milestones = lr_schedule(options["learning_rate"], options["max_epochs"])
        return Poisoning(
            y_train=data.y_train.clone(), poison_indices=idx, x_train=x_train,
            details={"art_version": art_version(), **options, "art_epsilon": options["epsilon"] / LEVELS,
                     "learning_rate_schedule": {"rates": rates, "milestones": milestones},
                     "pool_size": len(class_indices(data.y_train, t.target_class)), "poisoned": len(chosen),
                     "b_score": min(scores), "b_scores": scores,
                     **perturbation_stats(data.x_train[idx], x_train[idx])})


@hookimpl
def register_attacks(register):
    register(ArtGradientMatching())
