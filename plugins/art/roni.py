"""Defense plugin ``art-roni``: ART's ``RONIDefense`` (Reject On Negative Impact; Nelson et al. 2009, Barreno
et al. 2010) on ptk's poisoned model, then a retrain without what it rejects.

RONI fine-tunes a copy of the model on the whole (poisoned) training set, then visits every training sample
in a random order: it fine-tunes a copy on the trusted clean set plus that one sample and measures the
accuracy change on a quiz set drawn from the training data. A sample whose change falls below ``-eps``
(uncalibrated) or below the median minus three standard deviations of the changes that clean calibration
samples cause (calibrated) is rejected; an accepted one joins the trusted set.

Cost, the reason for ``calibrated=false`` by default: RONI fine-tunes once per training sample, and the
calibrated form fine-tunes once per calibration sample (``pp_cal`` of the training set) for *each* training
sample as well, so its cost grows with the square of the training set. It is a defense for small models and
small data sets; docs/defenses/art-roni.md has measured times.

ART's algorithm is kept. ptk adapts what ART leaves to its user:

* **Training settings.** ART calls ``classifier.fit(x, y)`` with PyTorchClassifier's defaults (10 epochs,
  batch 128) and needs an optimizer. :class:`FitSettings` is a PyTorchClassifier whose ``fit`` uses the
  ``fit_epochs`` and ``fit_batch_size`` options with SGD at ``fit_lr``; a copy (ART deep-copies the
  classifier before each fit) keeps them. A batch that would hold a single sample is dropped, because
  batch norm cannot train on one.
* **Layout.** ART stacks the trusted set with one sample by ``np.vstack([x_trusted, x_i])``, which fails on
  images (a 4-d batch and a 3-d image: "all the input arrays must have same number of dimensions"); RONI in
  ART 1.20.1 works only on flat feature vectors. ptk hands it images flattened to rows and a model that
  unflattens them first (:func:`flat`). Labels are stacked the same way, so they go in one-hot.
* **The performance function, two ART bugs.** ART's ``perf_func="accuracy"`` hands scikit-learn's
  ``accuracy_score`` the classifier's scores rather than labels, which it refuses ("Classification metrics
  can't handle a mix of multilabel-indicator and continuous-multioutput targets"); ptk passes ART a callable
  (ART's documented alternative) that compares argmaxes. And ART's shift is ``perf(before) - perf(after)``,
  rejected when below ``-eps``: with accuracy, that rejects a sample whose addition *raises* quiz accuracy,
  the opposite of RONI. ``perf=error`` (the default) gives ART the quiz error rate instead, so ART's shift is
  the accuracy change and RONI rejects what lowers it, as the paper does; ``perf=accuracy`` keeps ART's sign.
* **Trusted data.** ART's ``x_val``/``y_val`` are ``n`` verified clean training images (``ctx.trusted_data``).
* **Seeds.** ART draws the quiz set, the calibration split and the visiting order from numpy's global RNG and
  PyTorch's DataLoader shuffles with torch's: both are seeded with the run's seed for the call.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ptk import (Defense, DefenseContext, DefenseResult, Option, ThreatModel, UsageError, fraction, hookimpl,
                 non_negative, positive)
from ptk_plugins.art._bridge import (art_device_type, art_images, art_one_hot, art_seeded, art_training_arrays,
                                     art_version, check_trusted_count, quiet_art)


def roni_classifier(network: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device,
                    epochs: int, batch_size: int, lr: float):
    """An ART PyTorchClassifier over a copy of ``network`` whose ``fit`` trains with ptk's RONI options, taking
    images flattened to rows (see :func:`flat`)."""
    from art.estimators.classification import PyTorchClassifier  # ART only when the defense runs (see _bridge)

    class FitSettings(PyTorchClassifier):
        def fit(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> None:
            lone = len(x) % batch_size == 1  # batch norm cannot train on a batch of one sample
            super().fit(x, y, batch_size=batch_size, nb_epochs=epochs, drop_last=lone and len(x) > 1, **kwargs)

    model = nn.Sequential(nn.Unflatten(1, image_shape), copy.deepcopy(network))  # ART hands it flat rows
    return FitSettings(model=model, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                       input_shape=(int(np.prod(image_shape)),), nb_classes=num_classes, clip_values=(0.0, 1.0),
                       device_type=art_device_type(device))


def flat(x: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) as rows (N, C*H*W): ART's RONI stacks a trusted batch with one sample by
    ``np.vstack([x_trusted, x_i])``, which only works when a sample is one-dimensional."""
    return x.reshape(len(x), -1)


def accuracy(labels: np.ndarray, outputs: np.ndarray) -> float:
    """Quiz accuracy from one-hot labels and the classifier's scores (ART's "accuracy" compares the scores
    themselves with the labels, which scikit-learn refuses)."""
    return float((labels.argmax(1) == outputs.argmax(1)).mean())


def error_rate(labels: np.ndarray, outputs: np.ndarray) -> float:
    return 1.0 - accuracy(labels, outputs)


#: The ``perf`` option: the performance function ART's RONI is given (see the module docstring)
PERF_FUNCTIONS = {"error": error_rate, "accuracy": accuracy}


def roni_flags(classifier, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int,
               options: dict[str, Any], seed: int) -> tuple[np.ndarray, dict[int, float]]:
    """ART's RONIDefense.detect_poison: a flag per training sample (True = rejected) and ART's report
    (rejected index -> its accuracy change on the quiz set)."""
    from art.defences.detector.poison import RONIDefense  # ART only when the defense runs (see _bridge)

    with art_seeded(seed):
        defence = RONIDefense(classifier, flat(x), art_one_hot(y, num_classes), flat(x_val), art_one_hot(y_val, num_classes),
                              perf_func=PERF_FUNCTIONS[options["perf"]], pp_cal=options["pp_cal"],
                              pp_quiz=options["pp_quiz"], calibrated=options["calibrated"], eps=options["eps"])
        report, is_clean = defence.detect_poison()
    return np.asarray(is_clean) == 0, {int(k): float(v) for k, v in report.items()}


class ArtRoni(Defense):
    name = "art-roni"
    description = "ART's RONI: reject training samples whose addition to trusted data lowers quiz accuracy; retrain"
    api_version = 2
    threat = ThreatModel(knows_target=False, trusted_data=True, uses_poisoned_model=True, knows_budget=False,
                         knows_trigger=False)
    cost = "one fine-tune per training sample"
    options = [
        Option("n", int, 50, "verified clean training images RONI starts its trusted set from (ART's x_val)",
               check=positive),
        Option("calibrated", bool, False, "ART's calibrated RONI (threshold from pp_cal calibration samples, "
               "refitted for every training sample: cost grows with the square of the data; ART's default is true)"),
        Option("eps", float, 0.1, "uncalibrated RONI rejects a sample whose quiz-accuracy change is below -eps "
               "(ART's default)", check=non_negative),
        Option("perf", str, "error", "error: RONI rejects samples that lower quiz accuracy (Nelson et al.); "
               "accuracy: ART 1.20's sign, which rejects samples that raise it (see docs/defenses/art-roni.md)",
               choices=tuple(PERF_FUNCTIONS)),
        Option("pp_quiz", float, 0.2, "share of the training set drawn as the quiz set (ART's default)", check=fraction),
        Option("pp_cal", float, 0.2, "share of the training set used for calibration (ART's default)", check=fraction),
        Option("fit_epochs", int, 1, "epochs of each of RONI's fine-tunes (ART's fit default is 10)", check=positive),
        Option("fit_batch_size", int, 64, "batch size of RONI's fine-tunes", check=positive),
        Option("fit_lr", float, 0.01, "SGD learning rate of RONI's fine-tunes", check=positive),
    ]

    def check(self, data, options: dict[str, Any]) -> None:
        quiz = int(options["pp_quiz"] * len(data.y_train))
        if quiz < 1:
            raise UsageError(f"art-roni.pp_quiz={options['pp_quiz']} of {len(data.y_train)} training images is an "
                             "empty quiz set; raise -o art-roni.pp_quiz or --subset")
        if options["calibrated"] and options["pp_quiz"] + options["pp_cal"] > 1:
            raise UsageError(f"art-roni.pp_quiz={options['pp_quiz']} + pp_cal={options['pp_cal']} is more than the "
                             "whole training set (ART draws the quiz and the calibration sets from it); keep their "
                             "sum at most 1")
        check_trusted_count("art-roni", options["n"], data)

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        x, y = art_training_arrays(ctx.data)
        x_val, y_val = ctx.trusted_data(options["n"])
        with quiet_art(), ctx.own_training("art-roni fine-tunes"):
            classifier = roni_classifier(ctx.poisoned_model, tuple(ctx.data.image_shape), ctx.data.num_classes,
                                         ctx.device, options["fit_epochs"], options["fit_batch_size"], options["fit_lr"])
            flagged, report = roni_flags(classifier, x, y, art_images(x_val),
                                         y_val.cpu().numpy(), ctx.data.num_classes, options, ctx.seed)
        if flagged.all():
            raise UsageError(f"art-roni rejected all {len(y)} training samples, leaving nothing to retrain on; "
                             "raise -o art-roni.eps, -o art-roni.n or lower -o art-roni.fit_lr")
        drop = torch.from_numpy(np.flatnonzero(flagged)).to(ctx.data.y_train.device)
        details = {"art_version": art_version(), "rejected": int(flagged.sum()), "trusted_images": len(y_val),
                   "fine_tunes": len(y) + 1 + (len(y) * int(options["pp_cal"] * len(y)) if options["calibrated"] else 0)}
        model = ctx.train_without(drop, desc="art-roni retrain")
        return DefenseResult(predictor=model, removed_indices=drop, details=details)


@hookimpl
def register_defenses(register):
    register(ArtRoni())
