"""The training loop and the batched inference passes every model goes through.

Flat on purpose (airbench / nanoGPT style): data are tensors on the device,
augmentation is batched, and one seed fixes initialisation, shuffling and
augmentation. On CUDA the forward runs under bf16 autocast in channels_last.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import crop_flip, draw_crop_flip
from .config import bound_problem
from .errors import UsageError
from .progress import progress


@dataclass(frozen=True)
class Recipe:
    """How every model of a run is trained. ``study`` is the seed study's recipe.

    ``fast`` is SGD with Nesterov momentum, label smoothing, warm-up and linear
    decay at a larger batch: the recipe for full runs on a GPU.
    """

    name: str = "study"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-4
    augment: bool = True

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise UsageError(f"unknown recipe {self.name!r}; recipes are: {', '.join(RECIPES)}")
        for key in ("epochs", "batch_size", "lr"):
            problem = bound_problem(key, getattr(self, key))
            if problem:
                raise UsageError(problem)

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {"study": dict(batch_size=128, lr=1e-4), "fast": dict(batch_size=512, lr=0.2)}


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on the CPU (fp32 keeps CPU runs bit-reproducible)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def make_optimizer(
    model: nn.Module, recipe: Recipe, n: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None, float]:
    """``(optimiser, per-step LR schedule or None, label smoothing)`` of ``recipe`` for ``n`` training samples.

    Adam (``study``) or SGD with warm-up and linear decay (``fast``). Shared by
    :func:`train_model` and defenses with their own loop, so every model of a
    run steps the same way.
    """
    total_steps = recipe.epochs * math.ceil(n / recipe.batch_size)
    if recipe.name == "fast":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: fast_lr_factor(s, total_steps))
        return opt, sched, 0.1
    return torch.optim.Adam(model.parameters(), lr=recipe.lr), None, 0.0


@dataclass(frozen=True)
class Batch:
    """One training step's sample indices and, when augmenting, its crop offsets and flips (all on the device)."""

    idx: torch.Tensor
    offsets: torch.Tensor | None = None
    flips: torch.Tensor | None = None


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device,
                  augment: bool = False) -> list[Batch]:
    """One epoch of shuffled batches, shuffled (and augmented) by ``gen``.

    A size-1 tail is dropped (BatchNorm needs two). The permutation and every
    batch's augmentation draws are made on the CPU first, in the order a
    per-batch :func:`~ptk.augment.random_crop_flip` would draw them (so a seed
    gives the same epoch as before), then moved to ``device`` in one copy: a
    copy from the CPU waits for the GPU, and one per step would stall it.
    """
    order = torch.randperm(n, generator=gen)
    sizes = [len(c) for c in order.split(batch_size)]
    if n >= 2 and sizes and sizes[-1] < 2:
        sizes.pop()
    kept = sum(sizes)
    if not augment:
        return [Batch(idx) for idx in order[:kept].to(device).split(sizes)]
    draws = [draw_crop_flip(b, gen) for b in sizes]  # batch by batch: the per-batch stream, unchanged
    offsets, flips = torch.cat([o for o, _ in draws], 1), torch.cat([f for _, f in draws])
    packed = torch.cat([order[:kept], offsets.flatten(), flips.long()]).to(device)  # the epoch's one copy
    idx, offsets, flips = packed[:kept], packed[kept : 3 * kept].view(2, kept), packed[3 * kept :].bool()
    return [Batch(*b) for b in zip(idx.split(sizes), offsets.split(sizes, 1), flips.split(sizes))]


def training_batch(x: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Images ``x[batch.idx]``, augmented with the batch's draws if it has them, in channels_last on CUDA."""
    xb = x[batch.idx]
    if batch.offsets is not None:
        xb = crop_flip(xb, batch.offsets, batch.flips)
    if xb.device.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb


def fast_lr_factor(step: int, total_steps: int) -> float:
    """The ``fast`` recipe's schedule: linear warm-up over the first 5% of steps, then linear decay to 0."""
    warm = max(1, total_steps // 20)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total_steps - step) / max(1, total_steps - warm))


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
                   smoothing: float, weights: torch.Tensor | None = None, reduce: str = "mean") -> None:
    """One step on a batch: forward (autocast on CUDA), per-sample cross-entropy times optional
    ``weights``, reduced by ``mean`` (train_model) or ``sum`` (weights that already sum to 1)."""
    with autocast(xb.device):
        logits = model(xb)
    loss = F.cross_entropy(logits.float(), yb, reduction="none", label_smoothing=smoothing)
    if weights is not None:
        loss = loss * weights
    loss = loss.mean() if reduce == "mean" else loss.sum()
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
) -> nn.Module:
    """Train ``model`` in place on uint8 images ``x`` with labels ``y``; returns it in eval mode.

    ``weights`` are per-sample loss weights (mean-normalised per batch by the
    caller's choice: the loss is ``sum(w * ce) / len(batch)``).
    """
    device = x.device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    n = len(y)
    opt, sched, smoothing = make_optimizer(model, recipe, n)
    for _ in progress(range(recipe.epochs), desc=desc):
        for batch in epoch_batches(n, recipe.batch_size, gen, device, recipe.augment):
            xb = training_batch(x, batch)
            idx = batch.idx
            optimizer_step(model, opt, xb, y[idx], smoothing, None if weights is None else weights[idx])
            if sched is not None:
                sched.step()
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
