"""Benchmark suites: fixed, versioned sets of cells that every defense is scored on (``ptk bench``).

A suite is a TOML file: a ``[suite]`` table (name, version, description, cost), a ``[base]`` table of run
settings (a ``--config`` file's keys, ``preset`` included) and one ``[[attacks]]`` table per attack setting,
each with its plugin options and its cells written out as ``[seed, target test index]`` pairs. The cells are
data, not a rule: two users running suite ``quick`` version 1 train on the same targets, seeds and recipe,
so their numbers are comparable, and a later version of ptk cannot quietly change them (a change is a new
version). A suite cell is a ``ptk sweep`` cell whose defense list is the one being benchmarked; its key
(attack setting, seed, target) is what pairs the defenses of different ``ptk bench run`` calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ExperimentConfig, load_toml, merge, short
from .errors import UsageError

if TYPE_CHECKING:
    from .sweep import Cell

#: Suite files shipped inside ptk (``ptk bench list``); a path to a TOML file names any other.
SUITE_PACKAGE = "ptk.suites"


@dataclass(frozen=True)
class SuiteAttack:
    """One attack setting of a suite: the attack plugin, its options, and its (seed, target index) cells."""

    label: str
    attack: str
    options: dict[str, dict[str, Any]]
    cells: list[tuple[int, int]]


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    cost: str
    base: dict[str, Any]
    attacks: list[SuiteAttack]
    protocol: str = ""
    source: str = ""  # the file it was read from
    preset: str = "study"

    @property
    def cell_count(self) -> int:
        return sum(len(a.cells) for a in self.attacks)

    def summary(self) -> dict[str, Any]:
        """What ``ptk bench list`` and the leaderboard say of the suite."""
        return {"name": self.name, "version": self.version, "description": self.description, "cost": self.cost,
                "protocol": self.protocol, "cells": self.cell_count, "attacks": [a.label for a in self.attacks],
                "preset": self.preset}


def shipped() -> dict[str, Path]:
    """The suites inside ptk, by name."""
    folder = resources.files(SUITE_PACKAGE)
    return {p.name.removesuffix(".toml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name, or a suite file by path; every problem a UsageError naming the file and key."""
    suites = shipped()
    if name_or_path in suites:
        path = suites[name_or_path]
    elif name_or_path.endswith(".toml") or Path(name_or_path).exists():
        path = Path(name_or_path)
        if not path.exists():
            raise UsageError(f"suite file {path} does not exist")
    else:
        raise UsageError(f"unknown suite {name_or_path!r}; suites are: {', '.join(sorted(suites))} "
                         "(ptk bench list), or give a suite file's path")
    return parse_suite(load_toml(path), str(path))


def parse_suite(raw: dict[str, Any], where: str) -> Suite:
    raw = dict(raw)
    head = raw.pop("suite", None)
    if not isinstance(head, dict):
        raise UsageError(f"{where}: a suite file needs a [suite] table with name, version, description and cost")
    for key, kind in (("name", str), ("version", int), ("description", str), ("cost", str)):
        if not isinstance(head.get(key), kind) or isinstance(head.get(key), bool):
            what = "an integer" if kind is int else "a string"
            raise UsageError(f"{where}: [suite] {key} must be {what}, got {short(head.get(key))}")
    base = dict(raw.pop("base", {}))
    preset = base.pop("preset", "study")
    if "defenses" in base:
        raise UsageError(f"{where}: [base] must not set defenses: `ptk bench run --defense` names them")
    from .config import PRESETS

    if preset not in PRESETS:
        raise UsageError(f"{where}: unknown preset {preset!r}; presets are: {', '.join(PRESETS)}")
    base = merge(PRESETS[preset], ExperimentConfig.check_types(base, f"{where} [base]"))
    entries = raw.pop("attacks", None)
    if raw:
        raise UsageError(f"{where}: unknown table(s) {', '.join(sorted(raw))}; a suite has [suite], [base] and "
                         "[[attacks]]")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{where}: a suite needs at least one [[attacks]] table")
    attacks = [parse_attack(e, f"{where} [[attacks]] #{i + 1}") for i, e in enumerate(entries)]
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise UsageError(f"{where}: two [[attacks]] share a label; labels are: {', '.join(labels)}")
    return Suite(head["name"], head["version"], head["description"], head["cost"], base, attacks,
                 str(head.get("protocol", "")), where, preset)


def parse_attack(entry: Any, where: str) -> SuiteAttack:
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: must be a table")
    unknown = sorted(set(entry) - {"label", "attack", "options", "cells"})
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; keys are label, attack, options, cells")
    attack, options, cells = entry.get("attack"), entry.get("options", {}), entry.get("cells")
    if not isinstance(attack, str) or not attack:
        raise UsageError(f"{where}: attack must be an attack plugin's name, got {short(attack)}")
    label = entry.get("label", attack)
    if not isinstance(label, str) or not label:
        raise UsageError(f"{where}: label must be a string, got {short(label)}")
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise UsageError(f"{where}: options must be a table of plugin = {{option = value}}, got {short(options)}")
    if not isinstance(cells, list) or not cells or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in c)
            for c in cells):
        raise UsageError(f"{where}: cells must be a non-empty list of [seed, target test index] pairs, got "
                         f"{short(cells)}")
    pairs = [(int(s), int(t)) for s, t in cells]
    if len(set(pairs)) != len(pairs):
        raise UsageError(f"{where}: cells lists a [seed, target] pair twice")
    return SuiteAttack(label, attack, options, pairs)


def suite_key(attack: str, seed: int, target_index: int) -> str:
    """What pairs rows across ``ptk bench run`` calls: the same attack setting, seed and target."""
    return json.dumps({"attack": attack, "seed": seed, "target_index": target_index}, sort_keys=True)


def suite_cells(suite: Suite, defenses_for: dict[str, list[str]]) -> list[Cell]:
    """The sweep cells that run ``defenses_for[key]`` on each suite cell (see :func:`suite_key`); a suite
    cell whose list is empty but was already run is left out. The undefended (clean, poisoned) models are
    in every cell."""
    from .sweep import Cell, cell_id

    out = []
    for a in suite.attacks:
        for seed, target in a.cells:
            key = suite_key(a.label, seed, target)
            if key not in defenses_for:
                continue
            values = {"attack": a.label, "seed": seed, "target_index": target}
            settings = merge(suite.base, {"attack": a.attack, "options": a.options, "seed": seed,
                                          "target_index": target, "defenses": defenses_for[key] or ["none"]})
            config = ExperimentConfig.from_dict(settings, where=f"{suite.source} ({a.label}, seed {seed}, "
                                                                f"target {target})")
            out.append(Cell(cell_id(config), config, values))
    return out


def draw_targets(config: ExperimentConfig, count: int, registry, data_root: Path | None = None,
                 cache_root: Path | None = None) -> list[int]:
    """``count`` target test indices for ``config``'s seed with the random protocol (``--target-choice
    random``: a seeded uniform order of the source-class test images the clean model gets right), for a
    suite file to write down once. The clean model is trained (or read from the model cache) as `ptk run`
    would train it."""
    from .cache import ModelCache
    from .experiment import check_against_data, load_data, new_session, plan, target_order
    from .paths import cache_dir
    from .train import predict_proba

    p = plan(config, registry)
    data = load_data(p, data_root)
    source, target_class = check_against_data(p, data)
    data = data.to(p.device)
    session = new_session(p, data, ModelCache(cache_dir(cache_root)))
    clean = session.train_tracked(data.x_train, data.y_train, desc=f"clean model, seed {config.seed}")
    pool = (data.y_test == source).nonzero().squeeze(1)
    order = target_order(predict_proba(clean.model, data.x_test[pool]), source, target_class, "random", config.seed)
    if count > len(order):
        raise UsageError(f"seed {config.seed}: the clean model gets only {len(order)} source-class test images "
                         f"right; ask for at most {len(order)} targets")
    return [int(pool[i]) for i in order[:count]]
