"""The plugin core: entry-point discovery, in-process registration, validation, `ptk plugins`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ptk
from ptk import DISTRIBUTION
from ptk.errors import PluginError
from ptk.registry import load_registry

BUILTINS = {("attack", "labelflip"), ("defense", "ensemble"), ("dataset", "digits"), ("model", "resnet18")}


class NullDefense(ptk.Defense):
    name = "null-defense"
    description = "returns the poisoned model unchanged"
    threat = ptk.ThreatModel(knows_target=True)

    def defend(self, ctx, options):
        return ptk.DefenseResult(predictor=ctx.poisoned_model, details={"saw_target": ctx.target.index})


class InProcessPlugin:
    @ptk.hookimpl
    def register_defenses(self, register):
        register(NullDefense())

    @ptk.hookimpl
    def register_attacks(self, register):
        pass


def test_builtins_come_from_the_ptk_entry_point_group(registry):
    reg = registry()
    found = {(e.kind, e.name) for e in reg.all()}
    assert BUILTINS <= found
    for e in reg.all():
        if (e.kind, e.name) in BUILTINS:
            assert e.dist == ptk.DISTRIBUTION and e.version == ptk.__version__
    assert not [b for b in reg.broken if b.dist == ptk.DISTRIBUTION]


def test_in_process_plugin_registers_through_the_hooks(registry):
    reg = registry((InProcessPlugin(), "inproc"))
    entry = reg.get("defense", "null-defense")
    assert entry.dist == "(in-process)" and entry.source == "inproc"


@pytest.mark.parametrize("typo, hook, kind", [
    ("register_defences", "register_defenses", "defense"),  # British spelling: no such hook
    ("register_modles", "register_models", "model"),
])
def test_misspelled_hook_names_the_plugin_and_the_right_hook(typo, hook, kind):
    Typo = type("Typo", (), {typo: ptk.hookimpl(lambda self, register: register(NullDefense()))})
    reg = load_registry(entry_points=False)
    reg.add_plugin(Typo(), "typo-plugin", dist="typo-dist")
    (b,) = reg.broken
    assert (b.source, b.dist) == ("typo-plugin", "typo-dist")
    assert typo in b.error and f"Did you mean {hook}" in b.error
    with pytest.raises(ptk.UsageError):
        reg.get("defense", "null-defense")
    with pytest.raises(PluginError, match="typo-plugin.*typo-dist"):
        reg.get(kind, "typo-plugin")


def test_duplicate_names_name_both_distributions():
    reg = load_registry(entry_points=False)
    reg.add_plugin(InProcessPlugin(), "first", dist="dist-one")
    with pytest.raises(PluginError, match="dist-one.*dist-two"):
        reg.add_plugin(InProcessPlugin(), "second", dist="dist-two")


def test_hook_that_raises_marks_only_that_plugin_broken(registry):
    class Raises:
        @ptk.hookimpl
        def register_attacks(self, register):
            raise RuntimeError("boom")

    reg = registry()
    reg.add_plugin(Raises(), "raiser", dist="bad-dist")
    assert any(b.source == "raiser" and "boom" in b.error for b in reg.broken)
    assert reg.get("attack", "labelflip")  # the others still work


@pytest.mark.parametrize("kind, attrs, error", [
    ("defense", {"api_version": 99}, "declares plugin API version 99; this ptk supports 1, 2"),
    ("attack", {"goal": "backdoor", "api_version": 1}, "goals other than 'target' need api_version = 2"),
    ("attack", {"goal": "sabotage", "api_version": 2}, "goals are: target, backdoor"),
])
def test_plugins_declaring_what_this_ptk_cannot_run_are_refused_when_registered(kind, attrs, error):
    base = {"defense": NullDefense, "attack": ptk.Attack}[kind]
    plugin = type("Odd", (base,), {"name": f"odd-{kind}", **attrs})()
    Registers = type("Registers", (), {f"register_{kind}s": ptk.hookimpl(lambda self, register: register(plugin))})
    reg = load_registry(entry_points=False)
    reg.add_plugin(Registers(), "odd-plugin")
    (broken,) = reg.broken
    assert broken.source == "odd-plugin" and error in broken.error
    assert f"odd-{kind}" not in reg.names(kind)


def test_unknown_name_suggests_closest(ptk):
    res = ptk("run", "--defense", "ensembel", "--preset", "quick", expect=2)
    assert "unknown defense 'ensembel'" in res.output and "Did you mean 'ensemble'" in res.output


def test_plugins_command_lists_kind_distribution_and_threat_model(ptk):
    out = json.loads(ptk("plugins", "--json").output)
    rows = {(p["kind"], p["name"]): p for p in out["plugins"]}
    assert BUILTINS <= set(rows)
    ens = rows[("defense", "ensemble")]
    assert ens["distribution"] == DISTRIBUTION and ens["threat_model"]["knows_target"] is False
    assert {o["name"] for o in ens["options"]} == {"k", "mode"}
    text = ptk("plugins", "labelflip").output
    assert "-o labelflip.budget=250" in text


#: Run in a fresh interpreter: `ptk plugins`, then every module of the built-in plugins (the ART backend's
#: included); prints the ART modules that got imported.
LIST_THEN_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import ptk_plugins
from ptk.cli import cli
def loaded(*roots):
    return sorted(m for m in sys.modules if m.partition(".")[0] in roots)
cli(["plugins"], standalone_mode=False)
print(json.dumps(loaded("art", "torchvision", "sklearn")))
for m in pkgutil.iter_modules(ptk_plugins.__path__, "ptk_plugins."):
    importlib.import_module(m.name)
print(json.dumps(loaded("art")))
"""


def test_listing_plugins_imports_neither_art_nor_torchvision_nor_sklearn():
    """`import art` takes ~10 s, torchvision ~2 s (it pulls in torch's compiler), scikit-learn ~2 s; `ptk
    plugins` (and every command's registry) needs none of them: they load when a plugin first uses them. And
    no plugin module imports ART at import time, only when it runs."""
    done = subprocess.run([sys.executable, "-c", LIST_THEN_IMPORT_ALL], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    *listing, heavy, art_modules = done.stdout.splitlines()
    assert any("activation-clustering" in line for line in listing)  # the plugin that wraps ART is listed
    assert json.loads(heavy) == []
    assert json.loads(art_modules) == []
