"""Defense plugin ``art-spectral-signatures``: ART's ``SpectralSignatureDefense`` (Tran, Li and Madry, NeurIPS
2018) on ptk's poisoned model, then a retrain without what it flags.

ART scores each training image by its projection on the top singular vector of its class's centred
penultimate-layer activations and, in every class, flags the images above the
``1 - eps_multiplier * expected_pp_poison`` quantile. ptk hands ART the poisoned model through
:func:`ptk_plugins.art._bridge.art_classifier`, whose last layer is the features (not the
logits; ART issue #1810), and keeps ART's algorithm and flags. ART reports scores only for the flagged
images, so ptk's per-sample suspicion scores are ART's own ``spectral_signature_scores`` on the same
activations for every image, over its class's median (ART's scores are only comparable within a class).

Threat model: ``expected_pp_poison``, the share of poison ART should expect, is an option with ART's
default (0.33), never the attack's true budget, so this defense does not know the budget, the target or
the trigger.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptk import Defense, DefenseContext, DefenseResult, Option, ThreatModel, UsageError, hookimpl, positive, share
from ptk_plugins.art._bridge import art_classifier, art_training_arrays, art_version, quiet_art


def spectral_flags(classifier, x: np.ndarray, y: np.ndarray, num_classes: int,
                   options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """ART's SpectralSignatureDefense on ``classifier``: a flag per sample (True = poison) and a suspicion
    score per sample (ART's spectral score over its class's median)."""
    from art.defences.detector.poison import SpectralSignatureDefense  # ART only when run (see _bridge)

    defence = SpectralSignatureDefense(classifier, x, y, expected_pp_poison=options["expected_pp_poison"],
                                       batch_size=options["batch_size"], eps_multiplier=options["eps_multiplier"])
    _, is_clean = defence.detect_poison()
    acts = classifier.get_activations(x, layer=len(classifier.layer_names) - 1, batch_size=options["batch_size"])
    acts = acts.reshape(len(acts), -1)
    scores = np.zeros(len(y))
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if len(members):
            s = SpectralSignatureDefense.spectral_signature_scores(acts[members])[:, 0]
            scores[members] = s / max(float(np.median(s)), 1e-12)
    return np.asarray(is_clean) == 0, scores


class ArtSpectralSignatures(Defense):
    name = "art-spectral-signatures"
    description = "ART's SpectralSignatureDefense: flag per-class spectral outliers of the features; retrain"
    api_version = 2
    threat = ThreatModel(knows_target=False, trusted_data=False, uses_poisoned_model=True, knows_budget=False,
                         knows_trigger=False)
    options = [
        Option("expected_pp_poison", float, 0.33, "the share of poison ART should expect in each class (ART's "
               "default; not the attack's true budget, which the defense does not know)", check=share),
        Option("eps_multiplier", float, 1.5, "ART flags the top eps_multiplier x expected_pp_poison of each class",
               check=positive),
        Option("batch_size", int, 128, "ART's batch size for the activations", check=positive),
    ]

    def check(self, data, options: dict[str, Any]) -> None:
        """ART flags ``eps_multiplier x expected_pp_poison`` of each class: above 1 that is more than the whole
        class, which ART does not refuse (it flags every image and the retraining has nothing of that class)."""
        flagged = options["eps_multiplier"] * options["expected_pp_poison"]
        if flagged >= 1:
            raise UsageError(f"{self.name}: eps_multiplier x expected_pp_poison = {options['eps_multiplier']} x "
                             f"{options['expected_pp_poison']} = {flagged:.0%} of each class would be flagged; keep the "
                             "product below 1 (the defaults flag 1.5 x 0.33 = 50%)")

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        x, y = art_training_arrays(ctx.data)
        with quiet_art():
            classifier = art_classifier(ctx.poisoned_model, tuple(ctx.data.image_shape), ctx.data.num_classes,
                                        ctx.device)
            flagged, scores = spectral_flags(classifier, x, y, ctx.data.num_classes, options)
        drop = torch.from_numpy(np.flatnonzero(flagged)).to(ctx.data.y_train.device)
        details = {"art_version": art_version(), "flagged": int(flagged.sum()),
                   "flagged_per_class": np.bincount(y[flagged], minlength=ctx.data.num_classes).tolist()}
        model = ctx.train_without(drop, desc="art-spectral-signatures retrain")
        return DefenseResult(predictor=model, removed_indices=drop, scores=torch.from_numpy(scores), details=details)


@hookimpl
def register_defenses(register):
    register(ArtSpectralSignatures())
