"""Defense plugins ``bilevel`` and ``bilevel-trusted``: learning to reweight (Ren et al. 2018).

The study's Defense 2 ("adaptive bilevel optimisation"). A model is trained
from scratch; at every step each sample of the batch gets a weight from a
one-step look-ahead: how much would a small step on that sample lower the loss
on a *meta set*? Samples whose step would raise the meta loss get weight 0.

Two plugins because a defense declares one threat model:

* ``bilevel``: the meta set is the target image with its true (source) label,
  as in the study; the defense therefore knows the target.
* ``bilevel-trusted``: the meta set is ``n`` clean, verified training samples
  (``ctx.trusted_data``); the target stays unknown.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ptk import (
    Defense,
    DefenseContext,
    DefenseResult,
    Option,
    Recipe,
    ThreatModel,
    autocast,
    epoch_batches,
    hookimpl,
    make_optimizer,
    non_negative,
    optimizer_step,
    positive,
    training_batch,
)


@dataclass
class MetaSet:
    """Images (uint8) and true labels the look-ahead step is scored on; ``batch`` caps the per-step sample."""

    x: torch.Tensor
    y: torch.Tensor
    batch: int

    def sample(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """All of the meta set, or a random ``batch`` of it when it is larger (drawn from its own generator)."""
        if len(self.y) <= self.batch:
            return self.x, self.y
        pick = torch.randperm(len(self.y), generator=gen)[: self.batch].to(self.x.device)
        return self.x[pick], self.y[pick]


def meta_gradient(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, meta_x: torch.Tensor, meta_y: torch.Tensor,
                  lr: float, smoothing: float) -> torch.Tensor:
    """``d meta / d eps`` for one batch, by a virtual SGD step (Ren et al. 2018, Algorithm 1).

    ``eps`` (zeros) weights the batch loss; parameters take a virtual step
    ``theta - lr * grad(sum(eps * ce))``; the meta loss under those parameters
    is differentiated back to ``eps``. At ``eps = 0`` this equals
    ``-lr * <grad meta, grad ce_i>``: ``lr`` scales every sample alike, so after
    normalisation its value does not matter as long as it is positive.

    BatchNorm: the batch forward runs in train mode (batch statistics, as the
    real step) on *copies* of the running buffers, so look-aheads never move
    the model's running statistics; the meta forward runs in eval mode with the
    current running statistics, because a one-image meta set has no usable
    batch statistics.
    """
    params = dict(model.named_parameters())
    scratch = {k: b.clone() for k, b in model.named_buffers()}
    eps = torch.zeros(len(yb), device=xb.device, requires_grad=True)
    with autocast(xb.device):
        logits = functional_call(model, {**params, **scratch}, (xb,))
    ce = F.cross_entropy(logits.float(), yb, reduction="none", label_smoothing=smoothing)
    grads = torch.autograd.grad((eps * ce).sum(), list(params.values()), create_graph=True)
    virtual = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
    model.eval()
    try:
        with autocast(xb.device):
            meta_logits = functional_call(model, {**virtual, **dict(model.named_buffers())}, (meta_x,))
    finally:
        model.train()
    meta_loss = F.cross_entropy(meta_logits.float(), meta_y)
    (grad_eps,) = torch.autograd.grad(meta_loss, eps)
    return grad_eps


#: What a step did with its weights (counted in the run's details).
WEIGHTED, FLAT, ALL_HARMFUL = "weighted", "flat", "all_harmful"


def weights_from(grad_eps: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Per-sample weights ``max(-grad, 0)`` normalised to sum 1, and which case applied.

    Two ways to get no positive weight, treated differently:

    * ``flat``: the meta gradient is exactly zero for every sample, i.e. the meta
      loss is saturated (the target is already classified with probability 1.0
      in float32) and says nothing about any sample. Uniform weights: the step is
      an ordinary one. (Zero weights here would freeze training for good: the
      model stops changing, so the meta loss stays flat.)
    * ``all_harmful``: every sample would raise the meta loss. Zero weights, as
      Ren et al.; the caller skips the update.
    """
    if not grad_eps.any():
        return torch.full_like(grad_eps, 1 / len(grad_eps)), FLAT
    w = (-grad_eps).clamp_min(0)
    total = w.sum()
    if total > 0:
        return w / total, WEIGHTED
    return w, ALL_HARMFUL


def look_ahead_weights(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, meta_x: torch.Tensor,
                       meta_y: torch.Tensor, lr: float, smoothing: float) -> tuple[torch.Tensor, str]:
    """Weights of one batch from the look-ahead meta-gradient (see :func:`meta_gradient`, :func:`weights_from`)."""
    return weights_from(meta_gradient(model, xb, yb, meta_x, meta_y, lr, smoothing))


@dataclass
class Reweighted:
    """A model trained with look-ahead weights, and what the weights were."""

    model: nn.Module
    final_weight: torch.Tensor  # per training sample, the last time it was seen; 1 = a uniform batch's weight
    steps: dict[str, int]  # how many steps were WEIGHTED, FLAT (uniform) and ALL_HARMFUL (no update)
    zero_weight_fraction: float  # of all (sample, step) weights


def train_reweighted(ctx: DefenseContext, meta: MetaSet, recipe: Recipe, seed: int, desc: str) -> Reweighted:
    """Train a fresh model on the poisoned training set with per-step look-ahead weights.

    Initialisation, shuffling, augmentation, optimiser and schedule are the
    run's (``ptk.train``'s pieces, seeded the same way as ``train_model``); only
    the per-sample weights differ. A step whose weights are all zero makes no
    update, so Adam's momentum does not move the model on a batch it was told
    to ignore.
    """
    x, y = ctx.data.x_train, ctx.data.y_train
    device, n = x.device, len(y)
    model = ctx.build_model(seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    meta_gen = torch.Generator().manual_seed(seed + 1)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt, sched, smoothing = make_optimizer(model, recipe, n)
    final = torch.ones(n, device=device)  # a sample never seen (a dropped size-1 tail) keeps weight 1
    steps = {WEIGHTED: 0, FLAT: 0, ALL_HARMFUL: 0}
    zeros = weights_seen = 0
    for epoch in range(recipe.epochs):
        batches = epoch_batches(n, recipe.batch_size, gen, device, recipe, tuple(x.shape[-2:]))
        for batch in ctx.progress(batches, desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}", total=len(batches)):
            idx = batch.idx
            xb, yb = training_batch(x, batch), y[idx]
            meta_x, meta_y = meta.sample(meta_gen)
            w, case = look_ahead_weights(model, xb, yb, meta_x, meta_y, opt.param_groups[0]["lr"], smoothing)
            w = w.detach()
            final[idx] = w * len(idx)
            steps[case] += 1
            zeros += int((w == 0).sum())
            weights_seen += len(idx)
            if case != ALL_HARMFUL:
                optimizer_step(model, opt, xb, yb, smoothing, w, reduce="sum")
            if sched is not None:
                sched.step()
    model.eval()
    return Reweighted(model, final, steps, zeros / max(1, weights_seen))


def run_bilevel(ctx: DefenseContext, meta: MetaSet, options: dict[str, Any], meta_name: str) -> DefenseResult:
    """Train with look-ahead weights and package the result for the report."""
    recipe = ctx.recipe
    if options["epochs"]:
        recipe = dataclasses.replace(recipe, epochs=options["epochs"])
    with ctx.own_training(meta_name):  # counted as training time in the report
        out = train_reweighted(ctx, meta, recipe, ctx.seed, desc=meta_name)
    details = {
        "meta_set": meta_name,
        "meta_size": len(meta.y),
        "epochs": recipe.epochs,
        "steps": sum(out.steps.values()),
        "steps_weighted": out.steps[WEIGHTED],
        "steps_flat_meta_loss_uniform": out.steps[FLAT],
        "steps_all_harmful_skipped": out.steps[ALL_HARMFUL],
        "zero_weight_fraction": round(out.zero_weight_fraction, 6),
        "weight_note": "sample_weights: each sample's weight in the last epoch, times the batch size "
                       "(1 = the weight of a uniformly weighted batch)",
        "final_zero_weight_count": int((out.final_weight == 0).sum()),
    }
    return DefenseResult(predictor=out.model, sample_weights=out.final_weight, details=details)


EPOCHS = Option("epochs", int, 0, "training epochs (0 = the run's recipe; look-ahead steps cost ~3x a normal step)",
                check=non_negative)


class Bilevel(Defense):
    name = "bilevel"
    description = "learning to reweight (Ren et al. 2018) with the target image as meta set (the study's Defense 2)"
    threat = ThreatModel(knows_target=True, trusted_data=False, uses_poisoned_model=False)
    options = [EPOCHS]

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        t = ctx.target
        meta = MetaSet(t.image, torch.tensor([t.source_class], device=t.image.device), batch=1)
        return run_bilevel(ctx, meta, options, "target")


class BilevelTrusted(Defense):
    name = "bilevel-trusted"
    description = "learning to reweight (Ren et al. 2018) with n trusted clean samples as meta set"
    threat = ThreatModel(knows_target=False, trusted_data=True, uses_poisoned_model=False)
    options = [
        Option("n", int, 100, "trusted clean samples in the meta set (stratified by class)", check=positive),
        EPOCHS,
    ]

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        x, y = ctx.trusted_data(options["n"])
        return run_bilevel(ctx, MetaSet(x, y, batch=ctx.recipe.batch_size), options, "trusted")


@hookimpl
def register_defenses(register):
    register(Bilevel())
    register(BilevelTrusted())
