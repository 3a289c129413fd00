"""The training step's forward and loss under ``torch.compile``, compiled once per process and reused.

Why: at batch 128 a ResNet-18 step on a GPU is bound by kernel launches, not arithmetic (the ``study`` recipe
ran at 3.7% of an H200's bf16 peak). Compiling fuses the elementwise work (normalisation, BatchNorm, ReLU,
the loss), and ``reduce-overhead`` replays the whole step as a CUDA graph: one launch instead of hundreds.

One function is compiled per mode for the whole process. With torch's default of inlining built-in modules,
a model's parameters are inputs of the graph, not constants of it, so every model of a run (clean, poisoned,
each defense's retraining, each ensemble member) with the same architecture and batch shape reuses the same
compiled code: compile time is paid once per run, not once per model. Only full batches go through it; the
shorter last batch of an epoch runs eagerly, so a training set of any size adds no shape to compile.

Modes (``--compile``):

============== =======================================================================================
auto           ``reduce-overhead`` on CUDA, ``off`` on the CPU (inductor's CPU code takes about a minute
               to compile a ResNet-18 step on 2 cores, and eager fp32 keeps CPU runs bit-reproducible)
off            eager PyTorch
default        inductor, no CUDA graphs
reduce-overhead inductor and CUDA graphs (on a CPU the same as ``default``)
max-autotune   inductor with autotuned kernels (long compiles; worth it only for long runs)
aot_eager      the capture and autograd tracing without code generation: checks that a model compiles,
               and runs wherever torch does (the tests use it on the CPU)
============== =======================================================================================
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_compile

LossFn = Callable[..., torch.Tensor]


def resolve_compile(name: str, device: torch.device) -> str:
    """The mode ``name`` means on ``device``: ``auto`` becomes ``reduce-overhead`` on CUDA and ``off`` elsewhere."""
    check_compile(name)
    if name == "auto":
        return "reduce-overhead" if device.type == "cuda" else "off"
    return name


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on the CPU (fp32 keeps CPU runs bit-reproducible)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def batch_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, smoothing: float,
               weights: torch.Tensor | None = None, reduce: str = "mean") -> torch.Tensor:
    """The step's loss: forward (bf16 autocast on CUDA), per-sample cross-entropy in fp32 times optional
    ``weights``, reduced by ``mean`` or ``sum`` (weights that already sum to 1)."""
    with autocast(xb.device):
        logits = model(xb)
    loss = F.cross_entropy(logits.float(), yb, reduction="none", label_smoothing=smoothing)
    if weights is not None:
        loss = loss * weights
    return loss.mean() if reduce == "mean" else loss.sum()


_COMPILED: dict[str, LossFn] = {}


def loss_function(mode: str) -> LossFn:
    """:func:`batch_loss` for ``mode`` (a resolved mode, not ``auto``): itself when ``off``, else its compiled
    form, made on the first call in this process and shared by every later training."""
    if mode == "off":
        return batch_loss
    if mode not in _COMPILED:
        # dynamic=False: each batch shape its own specialised graph (a run has one or two: the recipe's batch
        # size, and weighted or not), instead of a slower shape-generic one after the second shape
        if mode == "aot_eager":
            _COMPILED[mode] = torch.compile(batch_loss, backend="aot_eager", dynamic=False)
        else:
            _COMPILED[mode] = torch.compile(batch_loss, mode=None if mode == "default" else mode, dynamic=False)
    return _COMPILED[mode]


def mark_step(mode: str) -> None:
    """Tell CUDA graphs a new training step begins, so the last step's graph outputs may be overwritten
    (without it, a replay can refuse to reuse memory an earlier step's loss still holds)."""
    if mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()
