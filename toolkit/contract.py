"""The plugin contract, checked at the boundary: what a plugin returns is checked where it returns it, and a
break is reported naming the plugin, the method and what it must be (docs/plugins.md lists each check)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from .errors import DataMissing, PluginError, UsageError
from .registry import Entry
from .types import DefenseResult, Poisoning, Predictor, Trigger


def plugin_failure(entry: Entry, step: str, exc: Exception) -> PluginError:
    """The one-line error for an exception a plugin raised: names the plugin, its distribution and the step."""
    return PluginError(f"{entry.kind} {entry.name!r} (plugin {entry.source}, {entry.dist}) failed in {step}: "
                       f"{type(exc).__name__}: {exc}")


def call_plugin(entry: Entry, method: str, *args: Any) -> Any:
    """``entry.plugin.<method>(*args)``, e.g. ``call_plugin(p.attack, "poison", ctx, opts)``.

    Bad input (UsageError, DataMissing) and out-of-memory (the CLI's --batch-size hint) pass
    through; any other exception is a bug in the plugin, reported in one line with its name.
    """
    try:
        return getattr(entry.plugin, method)(*args)
    except (UsageError, DataMissing, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise plugin_failure(entry, f"{method}()", exc) from exc


def checked_model(entry: Entry, net: Any, num_classes: int, image_shape: tuple[int, ...]) -> None:
    """The model contract, checked on the module ``build()`` returned, on two images, before any training:
    an ``nn.Module`` whose forward gives N x classes logits, whose ``features(x)`` gives one vector per image
    (N x D: defenses cluster and compare them) and, where it has a ``head``, ``head(features(x)) == forward(x)``.
    A break is the model plugin's bug, named here rather than deep inside a defense."""
    def bad(problem: str) -> PluginError:
        return PluginError(f"model {entry.name!r} (plugin {entry.source}, {entry.dist}): build() {problem}")

    if not isinstance(net, nn.Module):
        raise bad(f"returned {type(net).__name__}; it must return a torch.nn.Module")
    if not callable(getattr(net, "features", None)):
        raise bad("returned a module without a features(x) method (penultimate-layer activations, N x D)")
    x = torch.rand(2, *image_shape, generator=torch.Generator().manual_seed(0))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits, feats = net(x), net.features(x)
            head = getattr(net, "head", None)
            flat = isinstance(feats, torch.Tensor) and feats.dim() == 2
            again = head(feats) if callable(head) and flat else None
    except Exception as exc:
        raise bad(f"gave a module that fails on a batch of 2 images {tuple(x.shape)}: {type(exc).__name__}: {exc}") \
            from exc
    finally:
        net.train(was_training)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise bad(f"gave a module whose forward returns {got} for 2 images; expected (2, {num_classes}) logits")
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != 2:
        got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise bad(f"gave a module whose features(x) returns {got} for 2 images; expected N x D, one vector per "
                  "image (flatten or pool the activations)")
    if again is not None and not torch.allclose(again, logits, rtol=1e-4, atol=1e-4):
        raise bad("gave a module whose head(features(x)) differs from forward(x) (by up to "
                  f"{(again - logits).abs().max().item():.3g}); head must map features to the same logits")


def checked_trigger(entry: Entry, poisoning: Poisoning, data) -> Trigger | None:
    """The trigger of a ``backdoor`` attack's poisoning; a missing one (backdoor), an unexpected one (any other
    goal) or a target class outside the data set is the attack's bug, reported naming it."""
    trigger, goal = poisoning.trigger, entry.plugin.goal
    if (goal == "backdoor") != (trigger is not None):
        problem = "returned no Trigger" if trigger is None else "returned a Trigger"
        raise plugin_failure(entry, "poison()", ValueError(f"its goal is {goal!r} but it {problem}"))
    if trigger is not None and not 0 <= trigger.target_class < data.num_classes:
        raise plugin_failure(entry, "poison()", ValueError(
            f"its trigger's target_class {trigger.target_class} is not a class index (0..{data.num_classes - 1})"))
    return trigger


def json_problem(details: Any) -> str | None:
    """Why ``details`` cannot go into results.json (None when it can): names the first key that fails."""
    if not isinstance(details, dict):
        return f"details must be a dict, got {type(details).__name__}"
    for key, value in details.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            return f"details[{key!r}] is not JSON-serialisable ({exc}); convert it (a tensor: .tolist())"
    return None


def tensor_fields_problem(value: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> str | None:
    """The first field of ``value`` that should be a tensor (``optional`` ones: or None) and is not."""
    for name in required + optional:
        field_value = getattr(value, name)
        if not isinstance(field_value, torch.Tensor) and not (name in optional and field_value is None):
            allowed = "a torch.Tensor or None" if name in optional else "a torch.Tensor"
            return f"{type(value).__name__}.{name} must be {allowed}, got {type(field_value).__name__}"
    return None


def checked_poisoning(entry: Entry, poisoning: Any) -> Poisoning:
    """An attack's return value, checked at the boundary: a wrong type or field is the attack's bug, named."""
    def bad(problem: str) -> PluginError:
        return plugin_failure(entry, "poison()", TypeError(problem))

    if not isinstance(poisoning, Poisoning):
        raise bad(f"returned {type(poisoning).__name__}; poison() must return a ptk.Poisoning(y_train=..., "
                  "poison_indices=...)")
    problem = tensor_fields_problem(poisoning, ("y_train", "poison_indices"), ("x_train",))
    if problem:
        raise bad(problem)
    problem = json_problem(poisoning.details)
    if problem:
        raise bad(f"Poisoning.{problem}")
    return poisoning


def checked_defense_result(entry: Entry, out: Any) -> DefenseResult:
    """A defense's return value, checked at the boundary (see :class:`ptk.DefenseResult`)."""
    def bad(problem: str) -> PluginError:
        return plugin_failure(entry, "defend()", TypeError(problem))

    if not isinstance(out, DefenseResult):
        raise bad(f"returned {type(out).__name__}; defend() must return a ptk.DefenseResult(predictor=...)")
    if not isinstance(out.predictor, (torch.nn.Module, Predictor)):
        raise bad(f"DefenseResult.predictor must be a trained nn.Module or a ptk.Predictor, got "
                  f"{type(out.predictor).__name__}")
    problem = tensor_fields_problem(out, (), ("removed_indices", "sample_weights", "scores"))
    if problem:
        raise bad(problem)
    if out.rejects is not None and not callable(out.rejects):
        raise bad(f"DefenseResult.rejects must be callable (uint8 images -> bool per image), got "
                  f"{type(out.rejects).__name__}")
    if out.input_scores is not None and not callable(out.input_scores):
        raise bad(f"DefenseResult.input_scores must be callable (uint8 images -> one float per image), got "
                  f"{type(out.input_scores).__name__}")
    problem = json_problem(out.details)
    if problem:
        raise bad(f"DefenseResult.{problem}")
    return out


