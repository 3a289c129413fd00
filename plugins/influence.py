"""Defense plugin ``influence`` (the study's Defense 5): prune the training samples that push the target.

Score of training sample ``i``: the dot product of two gradients over all
trainable parameters of the poisoned model (eval mode, so BatchNorm uses its
running statistics and the score is a property of the trained weights only)::

    score_i = grad_theta L(target, y_adv) . grad_theta L(x_i, y_i)

``y_adv`` is the label the poisoned model predicts for the target (its
"misclassified label"); ``y_i`` is the sample's own, possibly poisoned, label.
A positive score means one gradient step on sample ``i`` lowers the target's
loss under ``y_adv``: the sample pulls the target toward the wrong class. The
``k`` most positive samples are removed (``k`` = 0: the ``fraction`` of the
training set, 1% by default; never the true poison count, which a defender does
not know) and the model is retrained with the run's recipe. The scores go back
to ptk, which reports their AUROC against the true poison. This is the first-order influence approximation with the inverse
Hessian replaced by the identity (TracIn at a single checkpoint).

``score=logit`` replaces the sample's loss ``L(x_i, y_i)`` by minus its
own-label logit. The loss gradient is the logit gradients weighted by
``softmax - onehot``, which vanishes on samples the model already fits, and a
poisoned model fits its poison; the logit gradient keeps the direction and
drops that weight.

All N dot products come from forward-mode differentiation: for a batch, one
``torch.func.jvp`` of the logits along the fixed target gradient ``v`` gives
``J_i v`` for every sample at about the cost of two or three forward passes,
with no per-sample backward pass and no per-sample gradient stored; the chain
rule turns ``J_i v`` into each score. :func:`naive_influence_scores` is the
per-sample backward loop kept as the reference the tests and benchmarks check against.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from ptk import (
    Dataset,
    Defense,
    DefenseContext,
    DefenseResult,
    Option,
    ThreatModel,
    check_removal_count,
    fraction,
    hookimpl,
    non_negative,
    positive,
    removal_count,
)

Params = dict[str, torch.Tensor]
#: What is differentiated per training sample: its loss (the study) or minus its own-label logit.
SCORES = ("loss", "logit")
Progress = Callable[[Iterable[Any], str, int], Iterator[Any]]


def _trainable(model: nn.Module) -> Params:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def target_gradient(model: nn.Module, target_x: torch.Tensor, target_y: torch.Tensor) -> Params:
    """``grad_theta`` of the summed cross-entropy of ``target_x`` under ``target_y`` (eval mode), by parameter name."""
    model.eval()
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    with torch.enable_grad():
        loss = F.cross_entropy(model(target_x), target_y.reshape(-1).to(target_x.device), reduction="sum")
        grads = torch.autograd.grad(loss, params)
    return {n: g.detach() for n, g in zip(names, grads)}


def _sample_objective(logits: torch.Tensor, y: torch.Tensor, score: str) -> torch.Tensor:
    """Per-sample objective whose gradient is scored: cross-entropy, or minus the own-label logit."""
    if score == "loss":
        return F.cross_entropy(logits, y, reduction="none")
    return -logits.gather(1, y[:, None]).squeeze(1)


def influence_scores(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    direction: Params | None = None,
    *,
    target_x: torch.Tensor | None = None,
    target_y: torch.Tensor | None = None,
    batch_size: int = 64,
    score: str = "loss",
    progress: Progress | None = None,
) -> torch.Tensor:
    """``grad g(x_i, y_i) . direction`` for every sample, by batched forward-mode differentiation.

    ``g`` is the sample's cross-entropy (``score="loss"``, the study's method) or
    minus its own-label logit (``score="logit"``: the same gradient without the
    ``p - onehot`` factor, so a sample the model already fits still counts).
    ``direction`` maps parameter names to tensors shaped like the parameters
    (for example :func:`target_gradient`); or give ``target_x``/``target_y`` and
    it is computed here. ``model`` is put in eval mode (BatchNorm running
    statistics), so a sample's score does not depend on its batch. Per batch, one
    ``jvp`` of the logits along ``direction`` gives ``J_i v`` (one row per sample,
    one column per class); the chain rule then gives each score exactly:
    ``(softmax - onehot) . J_i v`` for the loss, ``-(J_i v)[y_i]`` for the logit.
    Returns float32 scores of shape (N,), on ``x``'s device.
    """
    if (direction is None) == (target_x is None or target_y is None):
        raise ValueError("influence_scores: give either direction=... or both target_x= and target_y=")
    if batch_size < 1:
        raise ValueError(f"influence_scores: batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"influence_scores: {len(x)} images but {len(y)} labels")
    if score not in SCORES:
        raise ValueError(f"influence_scores: score must be one of {', '.join(SCORES)}, got {score!r}")
    model.eval()
    if direction is None:
        direction = target_gradient(model, target_x, target_y)
    params = _trainable(model)
    missing = sorted(set(params) - set(direction))
    if missing:
        raise ValueError(f"influence_scores: direction lacks parameters {missing[:3]}{'...' if len(missing) > 3 else ''}")
    tangents = {n: direction[n].to(dtype=params[n].dtype, device=params[n].device) for n in params}
    frozen = {n: t.detach() for n, t in model.named_parameters() if n not in params}
    buffers = {n: b for n, b in model.named_buffers()}

    starts = range(0, len(x), batch_size)
    if progress is not None:
        starts = progress(starts, "influence scores", len(starts))
    out = []
    for s in starts:
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]

        def logits_of(p: Params, xb: torch.Tensor = xb) -> torch.Tensor:
            return functional_call(model, ({**p, **frozen}, buffers), (xb,))

        with torch.no_grad(), warnings.catch_warnings():  # forward mode needs no autograd graph
            # torch.func's forward-mode rules script a helper with torch.jit, which torch 2.14 calls deprecated:
            # torch's own call, nothing a user can act on, so not shown to them
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            logits, jv = jvp(logits_of, (params,), (tangents,))
        if score == "loss":
            residual = logits.softmax(1)
            residual[torch.arange(len(yb), device=yb.device), yb] -= 1
            dots = (residual * jv).sum(1)
        else:
            dots = -jv.gather(1, yb[:, None]).squeeze(1)
        out.append(dots.float())
    return torch.cat(out) if out else torch.empty(0, device=x.device)


def naive_influence_scores(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target_x: torch.Tensor,
    target_y: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    score: str = "loss",
) -> torch.Tensor:
    """Reference: one backward pass per training sample, in ``dtype`` (float64 for a ground truth).

    Works on a copy of ``model`` cast to ``dtype``; uint8 images are scaled to
    [0, 1] in ``dtype`` so no float32 rounding enters a float64 reference.
    Slow (N backward passes); for tests and benchmarks, not for runs.
    """
    ref = copy.deepcopy(model).to(dtype).eval()

    def prep(img: torch.Tensor) -> torch.Tensor:
        return img.to(dtype) / 255 if img.dtype == torch.uint8 else img.to(dtype)

    v = target_gradient(ref, prep(target_x), target_y)
    names = list(v)
    params = [dict(ref.named_parameters())[n] for n in names]
    scores = torch.empty(len(x), dtype=dtype, device=x.device)
    for i in range(len(x)):
        g = _sample_objective(ref(prep(x[i : i + 1])), y[i : i + 1], score).sum()
        grads = torch.autograd.grad(g, params)
        scores[i] = sum((gr * v[n]).sum() for gr, n in zip(grads, names))
    return scores


def adversarial_label(probs: torch.Tensor, true_class: int) -> tuple[int, str]:
    """The label to take the target's gradient under, and why.

    The poisoned model's prediction when it is wrong (the misclassified label);
    when it still predicts the true class (the attack failed) there is no
    misclassified label, so the most probable other class stands in.
    """
    pred = int(probs.argmax())
    if pred != true_class:
        return pred, "poisoned model's prediction for the target"
    runner_up = probs.clone()
    runner_up[true_class] = -1.0
    return int(runner_up.argmax()), "poisoned model predicts the true class; using its most probable other class"


class Influence(Defense):
    name = "influence"
    description = "remove the k samples whose loss gradient best aligns with the target's misclassified-label gradient"
    threat = ThreatModel(knows_target=True, trusted_data=False, uses_poisoned_model=True)
    options = [
        Option("k", int, 0, "samples to remove (0 = `fraction` of the training set)", check=non_negative),
        Option("fraction", float, 0.01, "with k=0: fraction of the training set to remove", check=fraction),
        Option("batch", int, 64, "samples per forward-mode (jvp) batch; lower it if memory runs out", check=positive),
        Option("score", str, "loss", "gradient of each sample's loss (the study) or of minus its own-label logit",
               choices=SCORES),
    ]

    def check(self, data: Dataset, options: dict[str, Any]) -> None:
        check_removal_count("influence.k", options["k"], len(data.y_train))

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        n = len(ctx.data.y_train)
        k = removal_count(options["k"], options["fraction"], n)  # never the true poison count: an oracle
        target = ctx.target
        model = ctx.poisoned_model
        probs = ctx.predict_proba(model, target.image)[0]
        label, why = adversarial_label(probs, target.source_class)
        direction = target_gradient(model, target.image, torch.tensor([label], device=ctx.device))
        scores = influence_scores(model, ctx.data.x_train, ctx.data.y_train, direction,
                                  batch_size=options["batch"], score=options["score"], progress=ctx.progress)
        order = scores.argsort(descending=True, stable=True)
        removed = order[:k].sort().values
        retrained = ctx.train_without(removed, desc="influence retrain")
        classes = ctx.data.classes
        removed_labels = torch.bincount(ctx.data.y_train[removed].cpu(), minlength=len(classes))
        details = {
            "k": k,
            "score": options["score"],
            "target_label": classes[label],
            "target_label_rule": why,
            "poisoned_target_prob_of_label": round(probs[label].item(), 6),
            "positive_scores": int((scores > 0).sum()),
            "kth_score": round(scores[order[k - 1]].item(), 6) if k else None,
            "max_score": round(scores.max().item(), 6),
            "removed_by_label": {c: int(v) for c, v in zip(classes, removed_labels.tolist()) if v},
        }
        return DefenseResult(predictor=retrained, removed_indices=removed, scores=scores, details=details)


@hookimpl
def register_defenses(register):
    register(Influence())
