"""Defense pipelines: ``--defense a+b`` runs ``b`` on what ``a`` produced, as defenders deploy them (a
training-set sanitizer, then a test-time filter on the sanitized model).

A pipeline is a :class:`ptk.Defense` of its own, built from its stages: its row is named ``a+b``, its threat
model is the union of the stages' (it reads what any stage reads), and it defends the goals every stage
defends. Stage ``b`` gets a context whose training set is what ``a`` kept and whose "poisoned model" is
``a``'s model, each stage under its own threat model and options (``-o a.k=...`` still sets ``a``'s). Only
the last stage may be a test-time filter, and every stage but the last must give a model to start from.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .api import Defense, GOALS, defense_goals
from .types import DefenseResult, ThreatModel

if TYPE_CHECKING:
    from .context import DefenseContext
    from .registry import Entry, Registry

#: What joins stage names: ``--defense loss-outliers+art-strip``.
SEPARATOR = "+"


class Pipeline(Defense):
    """Stages run one after another on what the previous one produced."""

    def __init__(self, stages: list[Entry]) -> None:
        self.stages = stages
        self.name = SEPARATOR.join(e.name for e in stages)  # type: ignore[misc]
        self.description = "the defenses " + ", then ".join(e.name for e in stages)  # type: ignore[misc]
        self.threat = ThreatModel(**{f.name: any(getattr(e.plugin.threat, f.name) for e in stages)  # type: ignore[misc]
                                     for f in fields(ThreatModel)})
        self.goals = tuple(g for g in GOALS if all(g in defense_goals(e.plugin) for e in stages))  # type: ignore[misc]
        self.options = []  # type: ignore[misc]  # each stage's options stay its own

    def check(self, data, options: dict[str, Any]) -> None:
        pass  # each stage is checked with its own options (experiment.check_against_data)

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        from .context import DefenseContext
        from .contract import checked_defense_result

        n = len(ctx.data.y_train)
        kept = torch.arange(n, device=ctx.data.y_train.device)  # original indices of the current training set
        data, model = ctx.data, ctx.poisoned_model
        clean, poison = ctx._clean_labels, ctx._poison
        removed: list[torch.Tensor] = []
        scores = weights = None
        out = None
        stage_details = []
        for i, entry in enumerate(self.stages):
            stage = DefenseContext(session=ctx._session, data=data, options_of=ctx.options_of, poisoned_model=model,
                                   target=ctx._target, threat=entry.plugin.threat, attack_budget=ctx._budget,
                                   clean_labels=clean, poison_indices=poison, defense_name=entry.name,
                                   trigger=ctx._trigger, trusted_pool=ctx._trusted_pool)
            out = checked_defense_result(entry, entry.plugin.defend(stage, ctx.options_of[entry.name]))
            stage_details.append({"stage": entry.name, **(out.details or {})})
            if out.scores is not None:
                scores = spread(out.scores.float(), kept, n, fill=float(out.scores.max()) + 1)  # removed: most suspect
            if out.sample_weights is not None:
                weights = spread(out.sample_weights.float(), kept, n, fill=0.0)
            if i == len(self.stages) - 1:
                break
            if out.rejects is not None or out.input_scores is not None:
                raise ValueError(f"stage {entry.name!r} is a test-time filter: only the last stage of {self.name!r} "
                                 "may be one")
            if not isinstance(out.predictor, nn.Module):
                raise ValueError(f"stage {entry.name!r} gives a {type(out.predictor).__name__}, not a model the next "
                                 f"stage of {self.name!r} can start from")
            model = out.predictor
            if out.removed_indices is not None and len(out.removed_indices):
                keep = torch.ones(len(kept), dtype=torch.bool, device=kept.device)
                keep[out.removed_indices.to(kept.device).long()] = False
                removed.append(kept[~keep])
                position = torch.full((len(kept),), -1, dtype=torch.long, device=kept.device)
                position[keep] = torch.arange(int(keep.sum()), device=kept.device)
                poison = position[poison.to(kept.device).long()]
                poison = poison[poison >= 0]
                kept, clean = kept[keep], clean[keep]
                data = type(data)(data.name, data.x_train[keep], data.y_train[keep], data.x_test, data.y_test,
                                  data.classes)
        assert out is not None
        if out.removed_indices is not None and len(out.removed_indices):
            removed.append(kept[out.removed_indices.to(kept.device).long()])
        all_removed = torch.cat(removed).unique() if removed else None
        return DefenseResult(predictor=out.predictor, removed_indices=all_removed, sample_weights=weights,
                             scores=scores, details={"stages": stage_details}, rejects=out.rejects,
                             input_scores=out.input_scores)


def spread(values: torch.Tensor, kept: torch.Tensor, n: int, fill: float) -> torch.Tensor:
    """Per-sample ``values`` of the kept samples as a vector over all ``n``, ``fill`` where a stage removed one."""
    full = torch.full((n,), fill, dtype=values.dtype, device=values.device)
    full[kept.to(values.device)] = values
    return full


def defense_entry(registry: Registry, name: str) -> Entry:
    """The registered defense ``name``, or for ``a+b`` the pipeline of its stages (each looked up, so a
    misspelled stage gets the registry's closest-name message)."""
    from .registry import Entry

    if SEPARATOR not in name:
        return registry.get("defense", name)
    stages = [registry.get("defense", s.strip()) for s in name.split(SEPARATOR)]
    dists = sorted({e.dist for e in stages})
    return Entry(Pipeline(stages), name, " + ".join(dists), " + ".join(sorted({e.version for e in stages})))


def plugin_entries(entries: list[Entry]) -> list[Entry]:
    """``entries`` with each pipeline replaced by its stages (the plugins a run used, for provenance)."""
    out: list[Entry] = []
    for e in entries:
        out += e.plugin.stages if isinstance(e.plugin, Pipeline) else [e]
    return list({e.name: e for e in out}.values())
