"""The values ptk and its plugins hand each other: what a defense may know, what an attack returns, what a
defense returns, the target. Plain data, no behaviour that reaches into ptk, so every module (the plugin base
classes in :mod:`ptk.api`, the contexts, the evaluation) can import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["GOALS", "DefenseResult", "Poisoning", "Predictor", "Target", "ThreatModel", "Trigger"]

#: What an attack is after (``Attack.goal``): ``target``, one test image misclassified as the target class
#: (the study's goal); ``backdoor``, every image carrying a trigger classified as the trigger's target class.
GOALS = ("target", "backdoor")


@dataclass(frozen=True)
class ThreatModel:
    """What a defense assumes it knows. Shown by ``ptk plugins`` and in every report.

    A defense that does not declare ``knows_target`` cannot read the target image,
    and one that does not declare ``knows_budget`` cannot read the number of
    poisoned samples: its context raises if it tries, so results honestly reflect
    the threat model (a removal count equal to the true poison count is an oracle
    no defender has in practice).
    """

    knows_target: bool = False
    trusted_data: bool = False
    uses_poisoned_model: bool = True
    knows_budget: bool = False
    knows_trigger: bool = False

    def describe(self) -> str:
        """The one-line summary reports show. ``knows the trigger`` appears only when declared, so the
        summaries of defenses written before API version 2 (and sweep stores holding them) stay as they were."""
        parts = [
            "knows the target" if self.knows_target else "target unknown",
            "needs trusted clean data" if self.trusted_data else "no trusted data",
            "uses the poisoned model" if self.uses_poisoned_model else "does not use the poisoned model",
            *(["knows the trigger"] if self.knows_trigger else []),
            "knows the poison budget" if self.knows_budget else "poison budget unknown",
        ]
        return ", ".join(parts)


@dataclass(frozen=True)
class Trigger:
    """A backdoor attack's trigger: ``apply`` stamps it on a uint8 image batch (N, C, H, W) and returns the
    stamped uint8 batch (same shape, same device; the input is left unchanged); an image carrying it should be
    classified as ``target_class``. ``description`` is one line for results.json and reports."""

    apply: Callable[[torch.Tensor], torch.Tensor]
    target_class: int
    description: str = ""


@dataclass
class Poisoning:
    """What an attack returns: the poisoned training labels (and images, if it changes them), and for a
    backdoor attack (``goal = "backdoor"``) its :class:`Trigger`, from which ptk measures every model's
    attack success rate on triggered test images."""

    y_train: torch.Tensor
    poison_indices: torch.Tensor
    x_train: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    trigger: Trigger | None = None


@runtime_checkable
class Predictor(Protocol):
    """Anything that maps uint8 images (N, C, H, W) to class probabilities (N, classes)."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class DefenseResult:
    """What a defense returns.

    ``predictor`` is a trained ``nn.Module`` (from ``ctx.train``) or any
    :class:`Predictor` such as an ensemble. ``rejects`` makes the defense a test-time
    input filter (STRIP, say): given uint8 images (N, C, H, W) it returns a bool per image,
    True for one it refuses to classify; ptk then reports the share of clean and of
    triggered test images it rejects, and counts a rejected input as an attack that failed. ``removed_indices`` (training indices
    the defense dropped) lets ptk score removal precision and recall against the
    true poison; ``sample_weights`` is for reweighting defenses; ``scores`` is a
    per-training-sample suspicion score (higher = more likely poison), from which
    ptk reports a threshold-free AUROC against the true poison, so defenses can be
    compared without choosing how many to remove; ``input_scores`` is a test-time
    detector's threshold-free side: given uint8 images it returns one float per image
    (higher = more likely triggered), and ptk reports ``filter_auroc``, the AUROC of
    triggered against clean test images, beside the reject shares; ``details`` holds any
    JSON-serialisable extras for results.json.
    """

    predictor: nn.Module | Predictor
    removed_indices: torch.Tensor | None = None
    sample_weights: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    rejects: Callable[[torch.Tensor], torch.Tensor] | None = None
    input_scores: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Target:
    """The test image the attack aims at, and the misclassification it wants."""

    index: int
    source_class: int
    target_class: int
    image: torch.Tensor  # uint8 (1, C, H, W)
