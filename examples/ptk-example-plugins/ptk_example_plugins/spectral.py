"""Defense ``spectral-signatures`` (Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

Poisoned samples leave a trace in the top singular vector of their (poisoned)
class's centred penultimate-layer activations: projected on it, they sit far
from the class mean. For every class the defense scores each training image by
the size of that projection under the poisoned model, removes the highest
scores and retrains on the rest with the run's recipe.

How many: Tran et al. remove ``1.5 * eps`` images from *every* class, ``eps``
bounding the poison count, because the defender does not know which class the
poison went to. Like Tran et al., this defense assumes it knows that bound: it
declares ``ThreatModel(knows_budget=True)`` (every report says so), reads the
attack's poison count as ``ctx.attack_budget`` and removes
``ceil(factor * budget)`` per class (``factor`` = 1.5), never more than half of a
class. Its scores (each sample's projection size, over its class's median) go back
to ptk for a threshold-free AUROC.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ptk import Defense, DefenseContext, DefenseResult, Option, ThreatModel, hookimpl, positive


def spectral_scores(feats: torch.Tensor) -> torch.Tensor:
    """|projection| of each centred row of ``feats`` on the top right singular vector (Tran et al.'s score)."""
    centred = feats - feats.mean(0, keepdim=True)
    if len(feats) < 2:
        return centred.new_zeros(len(feats))
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]).abs()


class SpectralSignatures(Defense):
    name = "spectral-signatures"
    description = "per class, remove the samples with the largest projection on the top singular vector; retrain"
    # Needs the poisoned model's activations and a bound on the poison count; neither the target nor trusted data.
    threat = ThreatModel(knows_target=False, trusted_data=False, uses_poisoned_model=True, knows_budget=True)
    options = [Option("factor", float, 1.5, "remove factor x (attack budget) samples from every class (at most half "
                      "of a class)", check=positive)]

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        labels = ctx.data.y_train
        per_class = math.ceil(options["factor"] * ctx.attack_budget)
        feats = ctx.features(ctx.poisoned_model, ctx.data.x_train).double()
        removed = [labels.new_zeros(0)]
        suspicion = torch.zeros(len(labels), dtype=torch.float64, device=feats.device)
        for c in ctx.progress(range(len(ctx.data.classes)), desc="spectral signatures"):
            members = (labels == c).nonzero().squeeze(1)
            scores = spectral_scores(feats[members])
            suspicion[members] = scores / scores.median().clamp_min(1e-12) if len(scores) else scores
            take = min(per_class, len(members) // 2)
            removed.append(members[scores.argsort(descending=True, stable=True)[:take]])
        drop = torch.cat(removed).sort().values
        details = {"removed_per_class": torch.bincount(labels[drop].cpu(), minlength=len(ctx.data.classes)).tolist()}
        if len(drop) == 0:  # a zero budget: nothing to remove, the poisoned model stands
            return DefenseResult(predictor=ctx.poisoned_model, removed_indices=drop, scores=suspicion, details=details)
        model = ctx.train_without(drop, desc="spectral-signatures retrain")
        return DefenseResult(predictor=model, removed_indices=drop, scores=suspicion, details=details)


@hookimpl
def register_defenses(register):
    register(SpectralSignatures())
