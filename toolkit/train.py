"""The training loop and the batched inference passes every model goes through.

Flat on purpose (airbench / nanoGPT style): data are tensors on the device,
augmentation is batched, and one seed fixes initialisation, shuffling and
augmentation. On CUDA the forward runs under bf16 autocast in channels_last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import crop_flip, cutout, draw_crop_flip, draw_cutout
from .compiled import autocast, batch_loss, loss_function, mark_step
from .progress import progress
from .recipe import RECIPES, Recipe, lr_factor, named_recipe

__all__ = ["RECIPES", "Batch", "Recipe", "autocast", "batched", "epoch_batches", "features", "make_optimizer",
           "named_recipe", "optimizer_step", "per_sample_loss", "predict_proba", "train_model", "training_batch"]


def parameter_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """The model's parameters with ``recipe.weight_decay``; BatchNorm weights and biases (the 1-d parameters)
    in a group without it unless ``recipe.decay_norm_and_bias``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.decay_norm_and_bias or not recipe.weight_decay:
        return [{"params": params, "weight_decay": recipe.weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(
    model: nn.Module, recipe: Recipe, n: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None, float]:
    """``(optimiser, per-step LR schedule or None, label smoothing)`` of ``recipe`` for ``n`` training samples.

    Every number comes from the recipe (:mod:`ptk.recipe`). Shared by :func:`train_model` and defenses with
    their own loop, so every model of a run steps the same way.
    """
    groups = parameter_groups(model, recipe)
    # on CUDA, the fused kernels: one launch per step for every parameter instead of a few per tensor
    params = [p for g in groups for p in g["params"]]
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                                                     nesterov=recipe.nesterov and recipe.momentum > 0, **fused)
    else:
        opt = torch.optim.Adam(groups, lr=recipe.lr, **fused)
    if recipe.schedule == "constant":
        return opt, None, recipe.label_smoothing
    total_steps = recipe.epochs * math.ceil(n / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(recipe, s, total_steps))
    return opt, sched, recipe.label_smoothing


@dataclass(frozen=True)
class Batch:
    """One training step's sample indices and, when augmenting, its draws (all on the device) and how to apply
    them: crop offsets and flips, cutout corners."""

    idx: torch.Tensor
    offsets: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    corners: torch.Tensor | None = None
    pad: int = 4
    pad_mode: str = "zeros"
    cutout: int = 0


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device,
                  augment: bool | Recipe = False, image_size: tuple[int, int] = (32, 32)) -> list[Batch]:
    """One epoch of shuffled batches, shuffled (and augmented) by ``gen``.

    ``augment``: a recipe (its ``augment``, ``pad``, ``pad_mode``, ``flip`` and ``cutout``), True for the
    default crop and flip (4-pixel zero padding), or False. A size-1 tail is dropped (BatchNorm needs two).
    The permutation and every batch's augmentation draws are made on the CPU first, crop and flip in the
    order a per-batch :func:`~ptk.augment.random_crop_flip` would draw them (so a seed gives the same epoch
    as before; cutout corners, when on, are drawn after them), then moved to ``device`` in one copy: a copy
    from the CPU waits for the GPU, and one per step would stall it.
    """
    aug = augment if isinstance(augment, Recipe) else (Recipe() if augment else None)
    order = torch.randperm(n, generator=gen)
    sizes = [len(c) for c in order.split(batch_size)]
    if n >= 2 and sizes and sizes[-1] < 2:
        sizes.pop()
    kept = sum(sizes)
    if aug is None or not aug.augment:
        return [Batch(idx) for idx in to_device(order[:kept], device).split(sizes)]
    draws = [draw_crop_flip(b, gen, aug.pad) for b in sizes]  # batch by batch: the per-batch stream, unchanged
    offsets, flips = torch.cat([o for o, _ in draws], 1), torch.cat([f for _, f in draws])
    flips = flips if aug.flip else torch.zeros_like(flips)
    parts = [order[:kept], offsets.flatten(), flips.long()]
    if aug.cutout:
        parts.append(draw_cutout(kept, gen, aug.cutout, *image_size).flatten())
    packed = to_device(torch.cat(parts), device)  # the epoch's one copy
    idx, offsets, flips = packed[:kept], packed[kept : 3 * kept].view(2, kept), packed[3 * kept : 4 * kept].bool()
    corners = packed[4 * kept :].view(2, kept).split(sizes, 1) if aug.cutout else [None] * len(sizes)
    settings = dict(pad=aug.pad, pad_mode=aug.pad_mode, cutout=aug.cutout)
    return [Batch(i, o, f, c, **settings)
            for i, o, f, c in zip(idx.split(sizes), offsets.split(sizes, 1), flips.split(sizes), corners)]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (on the CPU) moved to ``device``; to a GPU from pinned memory without blocking, so the host does not
    wait for the GPU to finish the queued steps before it copies."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def training_batch(x: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Images ``x[batch.idx]``, augmented with the batch's draws if it has them, in channels_last on CUDA."""
    xb = x[batch.idx]
    if batch.offsets is not None:
        xb = crop_flip(xb, batch.offsets, batch.flips, batch.pad, batch.pad_mode)
    if batch.corners is not None:
        xb = cutout(xb, batch.corners, batch.cutout)
    if xb.device.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
                   smoothing: float, weights: torch.Tensor | None = None, reduce: str = "mean",
                   loss_fn=batch_loss) -> None:
    """One step on a batch: :func:`~ptk.compiled.batch_loss` (or its compiled form, ``loss_fn``), backward,
    the optimiser's step. ``reduce``: ``mean`` (train_model) or ``sum`` (weights that already sum to 1)."""
    loss = loss_fn(model, xb, yb, smoothing, weights, reduce)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    seed: int,
    weights: torch.Tensor | None = None,
    desc: str = "train",
    compile_mode: str = "off",
) -> nn.Module:
    """Train ``model`` in place on uint8 images ``x`` with labels ``y``; returns it in eval mode.

    ``weights`` are per-sample loss weights (mean-normalised per batch by the
    caller's choice: the loss is ``sum(w * ce) / len(batch)``). ``compile_mode``: a resolved mode of
    :mod:`ptk.compiled` for the full batches (the shorter last batch runs eagerly).
    """
    device = x.device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    n = len(y)
    opt, sched, smoothing = make_optimizer(model, recipe, n)
    params = [p for p in model.parameters() if p.requires_grad]
    average = [p.detach().clone() for p in params] if recipe.ema else None
    compiled = loss_function(compile_mode)
    for _ in progress(range(recipe.epochs), desc=desc):
        for batch in epoch_batches(n, recipe.batch_size, gen, device, recipe, tuple(x.shape[-2:])):
            xb = training_batch(x, batch)
            idx = batch.idx
            full = len(idx) == recipe.batch_size
            if full:
                mark_step(compile_mode)
            optimizer_step(model, opt, xb, y[idx], smoothing, None if weights is None else weights[idx],
                           loss_fn=compiled if full else batch_loss)
            if sched is not None:
                sched.step()
            if average is not None:
                with torch.no_grad():  # one fused update for all parameters, not a Python loop per step
                    torch._foreach_lerp_(average, params, 1 - recipe.ema)
    if average is not None:  # the averaged weights replace the last ones (BatchNorm statistics are the last)
        with torch.no_grad():
            torch._foreach_copy_(params, average)
    model.eval()
    return model


@torch.no_grad()
def batched(model_fn, x: torch.Tensor, batch_size: int = 512, desc: str | None = None) -> torch.Tensor:
    """Apply ``model_fn`` to ``x`` in eval-mode batches and concatenate (float32 results)."""
    chunks = x.split(batch_size)
    it = progress(chunks, desc=desc, total=len(chunks)) if desc and len(chunks) > 4 else chunks
    out = []
    for xb in it:
        with autocast(x.device):
            out.append(model_fn(xb).float())
    return torch.cat(out) if out else torch.empty(0)


def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Softmax probabilities of an eval-mode model on uint8 images."""
    model.eval()
    return batched(lambda b: model(b).float().softmax(1), x, batch_size)


def features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate-layer activations of an eval-mode model on uint8 images."""
    model.eval()
    return batched(model.features, x, batch_size, desc="features")


def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Cross-entropy of each sample under an eval-mode model, no augmentation."""
    model.eval()
    logits = batched(model, x, batch_size, desc="per-sample loss")
    return F.cross_entropy(logits, y, reduction="none")
