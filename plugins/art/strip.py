"""Defense plugin ``art-strip``: ART's ``STRIP`` (Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep
Neural Networks", ACSAC 2019), a test-time input filter for backdoors.

STRIP blends each input with ``num_samples`` clean images and looks at how much the model's predictions on
the blends vary: a triggered input keeps pulling every blend to the trigger's class (low entropy), a clean
one does not. ART calibrates an entropy threshold on clean held-out images, at the
``false_acceptance_rate`` quantile of a normal fitted to their entropies, and abstains (an all-zero
prediction) on every input below it. ptk keeps the poisoned model as it is and reports what the filter
refuses: the shares of clean and of triggered test images (``rejected_clean``, ``rejected_triggered``), and
the backdoor's success counted only on what it lets through.

ART's algorithm is kept; ptk adapts what ART cannot know:

* **Probabilities, not logits.** ART computes the entropy of ``classifier.predict``'s output, which its
  Keras examples make a softmax. ART's ``PyTorchClassifier.predict`` returns the network's raw output,
  here logits: their entropy is not defined (negative "probabilities" give NaN) and ART's calibration
  raises ("The data contains non-finite values") on the quick preset's ResNet. The wrapper hands ART the network with a softmax on top
  (:class:`Probabilities`); ``tests/test_art_strip.py`` shows both.
* **Clean images to blend with and calibrate on.** ART takes them as ``mitigate(x_val)``. ptk gives it
  ``n`` verified clean training images (``ctx.trusted_data``), so the threat model declares trusted data.
* **Seeds.** ART draws the blend partners from numpy's global RNG; it is seeded with the run's seed for each
  call (and put back afterwards), so the same images get the same verdicts in every run.

* **ART's entropy is over the wrong axis** (ART 1.20.1, ``STRIPMixin.predict`` and ``mitigate``): it sums
  ``scipy.stats.entropy(predictions, axis=0)``, the entropy of each *class's* probabilities spread across the
  blends, where the paper takes each blend's entropy over the classes and averages it over the blends. A
  triggered input, whose every blend goes to one class, then scores *higher* than a clean one, the opposite
  of what STRIP's threshold assumes: on the quick preset ART's score ranks triggered inputs below clean ones
  (AUROC 0.07) and refuses none of them. ``entropy=paper`` (the default) runs ART's code with that one call
  taken over the classes (``axis=1``: ART's sum over blends divided by ``num_samples`` is then the paper's
  mean), keeping ART's blends, draws and threshold; ``entropy=art`` runs ART untouched.
  docs/defenses/art-strip.md has both, measured.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ptk import Defense, DefenseContext, DefenseResult, Option, ThreatModel, UsageError, fraction, hookimpl, positive

from ptk_plugins.art._bridge import (art_device_type, art_images, art_version, check_trusted_count, numpy_global_seed,
                                     quiet_art)


class Probabilities(nn.Module):
    """A ptk Network whose output is the softmax of its logits: what ART's STRIP takes entropies of."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(x), dim=1)


def strip_classifier(network: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device,
                     num_samples: int, false_acceptance_rate: float):
    """ART's STRIP around ``network`` (fed floats in [0, 1], giving probabilities), not yet calibrated."""
    from art.defences.transformer.poisoning import STRIP  # ART only when the defense runs (see _bridge)
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(model=Probabilities(network).eval(), loss=nn.CrossEntropyLoss(),
                                   input_shape=image_shape, nb_classes=num_classes, clip_values=(0.0, 1.0),
                                   device_type=art_device_type(device))
    return STRIP(classifier)(num_samples=num_samples, false_acceptance_rate=false_acceptance_rate)


#: The ``entropy`` option: whose entropy STRIP thresholds (see the module docstring)
ENTROPIES = ("paper", "art")


@contextmanager
def strip_entropy(kind: str, seen: list[float] | None = None) -> Iterator[None]:
    """Within the block, ART's STRIP takes ``kind``'s entropy: ``art`` leaves ART's as it is; ``paper`` makes its
    one ``entropy(predictions, base=2, axis=0)`` call per input take each blend's entropy over the classes.
    With ``seen``, each call's summed entropy is appended to it: ART divides that by its number of blends and
    compares it with its threshold, so it is the input's STRIP score (low: suspect)."""
    from art.estimators.poison_mitigation.strip import strip as art_strip  # ART only when run (see _bridge)

    original = art_strip.entropy

    def patched(predictions: np.ndarray, base: float | None = None, axis: int = 0) -> np.ndarray:
        out = original(predictions, base=base, axis=1 if kind == "paper" else axis)
        if seen is not None:
            seen.append(float(np.sum(out)))
        return out

    art_strip.entropy = patched
    try:
        yield
    finally:
        art_strip.entropy = original


class StripFilter:
    """A calibrated STRIP as ptk's ``DefenseResult.rejects`` (uint8 images in, True where STRIP abstains) and
    ``input_scores`` (minus each input's normalised entropy: higher is more suspect). One pass of ART's
    ``predict`` gives both; the last images' answers are kept, so asking both of the same images costs one."""

    def __init__(self, strip, seed: int, entropy: str) -> None:
        self.strip = strip
        self.seed = seed
        self.entropy = entropy
        self.last: tuple[str, torch.Tensor, torch.Tensor] | None = None

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = hashlib.sha256(x.cpu().numpy().tobytes()).hexdigest() + str(tuple(x.shape))
        if self.last is None or self.last[0] != key:
            seen: list[float] = []
            with quiet_art(), numpy_global_seed(self.seed), strip_entropy(self.entropy, seen):
                predictions = self.strip.predict(art_images(x))
            # ART abstains with an all-zero row; a softmax row sums to one
            refused = torch.from_numpy(~predictions.any(axis=1)).to(x.device)
            scores = -torch.tensor(seen, dtype=torch.float64, device=x.device) / self.strip.num_samples
            self.last = (key, refused, scores)
        return self.last[1], self.last[2]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[1]


def calibrate(strip, x_clean: np.ndarray, seed: int, entropy: str) -> float:
    """ART's ``mitigate`` on ``x_clean`` with numpy's global RNG seeded; returns ART's entropy threshold."""
    with quiet_art(), numpy_global_seed(seed), strip_entropy(entropy):
        strip.mitigate(x_clean)
    return float(strip.entropy_threshold)


class ArtStrip(Defense):
    name = "art-strip"
    description = "ART's STRIP: refuse test inputs whose blends with clean images all get one class (backdoors)"
    api_version = 2
    goals = ("backdoor",)  # a filter for triggered inputs; a target attack's image carries no trigger
    threat = ThreatModel(knows_target=False, trusted_data=True, uses_poisoned_model=True, knows_budget=False,
                         knows_trigger=False)
    options = [
        Option("n", int, 200, "verified clean training images STRIP blends with and calibrates its threshold on "
               "(ART's x_val)", check=positive),
        Option("num_samples", int, 20, "blends per input (ART's num_samples)", check=positive),
        Option("false_acceptance_rate", float, 0.01, "ART's false_acceptance_rate: the quantile of the clean "
               "images' entropy below which an input is refused", check=fraction),
        Option("entropy", str, "paper", "paper: each blend's entropy over the classes, as in the STRIP paper; art: "
               "ART 1.20's entropy over the blends, which ranks triggered inputs as the least suspect (see "
               "docs/defenses/art-strip.md)", choices=ENTROPIES),
    ]

    def check(self, data, options: dict[str, Any]) -> None:
        if options["n"] < 2:
            raise UsageError(f"art-strip.n={options['n']}: STRIP fits a normal to the clean images' entropies and "
                             "needs at least 2; raise -o art-strip.n")
        check_trusted_count("art-strip", options["n"], data)

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        x_clean, _ = ctx.trusted_data(options["n"])
        strip = strip_classifier(ctx.poisoned_model, tuple(ctx.data.image_shape), ctx.data.num_classes, ctx.device,
                                 options["num_samples"], options["false_acceptance_rate"])
        threshold = calibrate(strip, art_images(x_clean), ctx.seed, options["entropy"])
        details = {"art_version": art_version(), "entropy": options["entropy"],
                   "entropy_threshold": round(threshold, 6), "calibration_images": len(x_clean)}
        strip_filter = StripFilter(strip, ctx.seed, options["entropy"])
        return DefenseResult(predictor=ctx.poisoned_model, rejects=strip_filter, input_scores=strip_filter.scores,
                             details=details)


@hookimpl
def register_defenses(register):
    register(ArtStrip())
