"""Guarantees ptk makes to plugin authors: API versioning, isolation of broken plugins,
errors that name the plugin at fault, every hook callable and documented.

Broken plugins here are real installed distributions as far as ptk can tell: a
``*.dist-info`` folder with a ``ptk`` entry-point group on ``sys.path``, exactly
what ``pip install`` leaves behind, so discovery goes through importlib.metadata.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

import ptk
from ptk import DISTRIBUTION
from ptk import hookspecs
from ptk.api import API_VERSION, SUPPORTED_API_VERSIONS
from ptk.config import ExperimentConfig
from ptk.experiment import run_experiment
from ptk.registry import load_registry

from .fixtures import ROOT, TINY
from .plugins.blobs import CALLS, Blobs, TinyModel

DOCS = ROOT / "docs" / "plugin-reference.md"
FAKE_DIST, FAKE_VERSION = "ptk-fake-plugins", "1.0"

#: module name -> source of a plugin module in the fake distribution (entry point name = key minus prefix)
FAKE_MODULES = {
    "ptk_fake_broken_import": "import ptk_no_such_dependency  # a missing dependency of the plugin\n",
    "ptk_fake_raising_hook": (
        "import ptk\n"
        "@ptk.hookimpl\n"
        "def register_attacks(register):\n"
        "    raise RuntimeError('hook exploded while registering')\n"
    ),
    "ptk_fake_future_api": (
        "import ptk\n"
        "class Future(ptk.Defense):\n"
        "    name = 'future-defense'\n"
        "    api_version = 99\n"
        "@ptk.hookimpl\n"
        "def register_defenses(register):\n"
        "    register(Future())\n"
    ),
    "ptk_fake_typo_hook": (
        "import ptk\n"
        "@ptk.hookimpl\n"
        "def register_defences(register):  # British spelling: no such hook\n"
        "    pass\n"
    ),
    "ptk_fake_exploding": (
        "import ptk\n"
        "class Exploding(ptk.Attack):\n"
        "    name = 'exploding'\n"
        "    description = 'raises inside poison()'\n"
        "    def poison(self, ctx, options):\n"
        "        raise RuntimeError('exploded on purpose inside poison')\n"
        "class BadCheck(ptk.Attack):\n"
        "    name = 'bad-check'\n"
        "    description = 'raises a KeyError inside check()'\n"
        "    def check(self, data, source, target, options):\n"
        "        options['no-such-option']\n"
        "@ptk.hookimpl\n"
        "def register_attacks(register):\n"
        "    register(Exploding())\n"
        "    register(BadCheck())\n"
    ),
}
BROKEN = {"broken-import": "ptk_no_such_dependency", "raising-hook": "hook exploded while registering",
          "future-api": "supports " + ", ".join(map(str, SUPPORTED_API_VERSIONS)),
          "typo-hook": "Did you mean register_defenses"}


def entry_name(module: str) -> str:
    return module.removeprefix("ptk_fake_").replace("_", "-")


@pytest.fixture
def fake_dist(tmp_path, monkeypatch, registry) -> Path:
    """Install (by putting on sys.path) a distribution holding one good and four broken plugins; the registry
    (and so the CLI) loads its entry points besides ptk's own."""
    site = tmp_path / "site"
    info = site / "ptk_fake_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {FAKE_DIST}\nVersion: {FAKE_VERSION}\n")
    eps = "".join(f"{entry_name(m)} = {m}\n" for m in FAKE_MODULES)
    (info / "entry_points.txt").write_text(f"[ptk]\n{eps}")
    for module, source in FAKE_MODULES.items():
        (site / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(site))
    registry(dists=[FAKE_DIST])
    return site


def test_api_version_is_public_and_supported():
    assert ptk.API_VERSION == API_VERSION and ptk.SUPPORTED_API_VERSIONS == SUPPORTED_API_VERSIONS
    assert API_VERSION in SUPPORTED_API_VERSIONS
    # a plugin that declares nothing gets the current version, so it is accepted
    assert ptk.Attack.api_version == ptk.Defense.api_version == API_VERSION


def test_broken_plugins_are_listed_with_error_and_distribution_while_others_work(ptk, fake_dist):
    out = json.loads(ptk("plugins", "--json").output)
    broken = {b["source"]: b for b in out["broken"]}
    for source, message in BROKEN.items():
        assert source in broken, f"{source} not reported broken: {out['broken']}"
        assert broken[source]["dist"] == FAKE_DIST and broken[source]["version"] == FAKE_VERSION
        assert message in broken[source]["error"]
    listed = {(p["kind"], p["name"]): p for p in out["plugins"]}
    assert listed[("attack", "exploding")]["distribution"] == FAKE_DIST  # the good plugin of the same dist
    assert listed[("attack", "labelflip")]["distribution"] == DISTRIBUTION  # and every other distribution's
    assert ("defense", "future-defense") not in listed
    text = ptk("plugins").output
    line = next(l for l in text.splitlines() if "raising-hook" in l)
    assert line.startswith("BROKEN") and FAKE_DIST in line and "hook exploded" in line


def test_run_naming_a_broken_plugin_fails_with_its_error(ptk, fake_dist):
    res = ptk("run", "--attack", "broken-import", "--preset", "quick", expect=1)
    assert "broken-import" in res.output and FAKE_DIST in res.output and "ptk_no_such_dependency" in res.output
    # a name no loaded plugin registers: a usage error that still points at the plugins that failed to load
    res = ptk("run", "--defense", "raising-defense", "--preset", "quick", expect=2)
    assert "unknown defense 'raising-defense'" in res.output
    assert "raising-hook" in res.output and "hook exploded" in res.output


@pytest.mark.slow
def test_attack_that_raises_in_poison_names_the_plugin(ptk, fake_dist, tmp_path):
    res = ptk("run", "--attack", "exploding", "--defense", "none", *TINY, "--out", tmp_path / "run", expect=1)
    assert "'exploding'" in res.output and FAKE_DIST in res.output and "poison()" in res.output
    assert "RuntimeError: exploded on purpose inside poison" in res.output
    assert "Traceback" not in res.output  # one line, not a stack dump


def test_attack_whose_check_raises_names_the_plugin_before_any_training(ptk, fake_dist, tmp_path):
    res = ptk("run", "--attack", "bad-check", "--defense", "none", *TINY, "--out", tmp_path / "run", expect=1)
    assert "'bad-check'" in res.output and FAKE_DIST in res.output and "check()" in res.output
    assert "KeyError" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run" / "results.json").exists()  # stopped before the clean model


# --- every hook, called through a registered plugin, in a real (tiny) run -------------------------

class FlipFirst(ptk.Attack):
    name = "api-flip"
    description = "relabels the first `budget` source images"
    options = [ptk.Option("budget", int, 2, "labels to flip")]

    def poison(self, ctx: ptk.AttackContext, options: dict[str, Any]) -> ptk.Poisoning:
        CALLS.append("attack.poison")
        chosen = (ctx.data.y_train == ctx.target.source_class).nonzero().squeeze(1)[: options["budget"]]
        y = ctx.data.y_train.clone()
        y[chosen] = ctx.target.target_class
        return ptk.Poisoning(y_train=y, poison_indices=chosen)


#: attributes the runner set on a model it handed out (it must set none: its cost comes back beside it)
STUCK_ON_MODELS: set[str] = set()


class DropHighLoss(ptk.Defense):
    name = "api-drop"
    description = "removes the `budget` highest-loss samples and retrains"
    threat = ptk.ThreatModel(knows_budget=True)

    def defend(self, ctx: ptk.DefenseContext, options: dict[str, Any]) -> ptk.DefenseResult:
        CALLS.append("defense.defend")
        loss = ctx.per_sample_loss(ctx.poisoned_model, ctx.data.x_train, ctx.data.y_train)
        order = loss.argsort(descending=True)
        model = ctx.train(keep=order[ctx.attack_budget:], desc="api-drop retrain")
        STUCK_ON_MODELS.update(vars(ctx.poisoned_model).keys() & {"train_seconds", "cached"},
                               vars(model).keys() & {"train_seconds", "cached"})
        return ptk.DefenseResult(predictor=model, removed_indices=order[: ctx.attack_budget])


def one_hook_plugin(hook: str, obj: ptk.api.Plugin) -> Any:
    """An object implementing only ``hook``, which registers ``obj`` and records that it was called."""

    class OneHook:
        called = False

    def impl(self, register):
        type(self).called = True
        register(obj)

    impl.__name__ = hook
    setattr(OneHook, hook, ptk.hookimpl(impl))
    return OneHook()


PLUGIN_FOR_HOOK = {"register_datasets": Blobs(), "register_models": TinyModel(), "register_attacks": FlipFirst(),
                   "register_defenses": DropHighLoss()}


def hook_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "ptk_spec"))


def test_every_hook_is_called_through_a_registered_plugin_in_a_real_run(tmp_path):
    missing = set(hook_names()) - set(PLUGIN_FOR_HOOK)
    assert not missing, f"hooks without a test plugin here: {sorted(missing)}; add one to PLUGIN_FOR_HOOK"
    reg = load_registry(entry_points=False)
    plugins = {hook: one_hook_plugin(hook, obj) for hook, obj in PLUGIN_FOR_HOOK.items()}
    for hook, plugin in plugins.items():
        reg.add_plugin(plugin, f"test-{hook}")
    assert not reg.broken
    assert all(p.called for p in plugins.values())

    CALLS.clear()
    config = ExperimentConfig(dataset="api-blobs", model="api-mlp", attack="api-flip", defenses=["api-drop"],
                              epochs=2, lr=1e-2, batch_size=16, device="cpu", options={"api-flip": {"budget": "3"}})
    saved: list[dict] = []
    r = run_experiment(config, reg, save=saved.append, data_root=tmp_path, use_cache=False)
    assert r["status"] == "complete", r
    assert {"dataset.load", "model.build", "attack.poison", "defense.defend"} <= set(CALLS)
    assert [m["name"] for m in r["models"]] == ["clean", "poisoned", "api-drop"]
    assert {name: p["distribution"] for name, p in r["plugins"].items()} == {
        n: "(in-process)" for n in ("api-blobs", "api-mlp", "api-flip", "api-drop")}
    assert len(r["attack"]["poison_indices"]) == 3
    assert r["models"][2]["removed_count"] == 3
    assert not STUCK_ON_MODELS
    # saved after every model, each time a snapshot of its own; the last is what run_experiment returns
    all_three = ["clean", "poisoned", "api-drop"]
    assert [[m["name"] for m in s["models"]] for s in saved] == [["clean"], ["clean", "poisoned"], all_three, all_three]
    assert saved[-1] == r and saved[0]["status"] == "running" and "cache" not in saved[0]


# --- documentation -------------------------------------------------------------------------------


def test_every_hook_is_documented_with_its_signature():
    text = DOCS.read_text()
    for name in hook_names():
        signature = f"{name}{inspect.signature(getattr(hookspecs, name))}"
        assert signature in text, f"docs/plugins.md (docs/plugin-reference.md) does not document the hook {signature}"


def public_instance_attributes(cls: type) -> set[str]:
    """Names a context's __init__ (and its bases') sets as public attributes, plus its public methods/properties."""
    names = {n for n in dir(cls) if not n.startswith("_")}
    for klass in cls.__mro__:
        if inspect.isfunction(vars(klass).get("__init__")):
            names |= set(re.findall(r"self\.([a-z]\w*) =", inspect.getsource(klass.__init__)))
    return names


def test_every_public_name_and_context_member_is_documented():
    text = DOCS.read_text()
    undocumented = [n for n in ptk.__all__ if n != "__version__" and f"`{n}" not in text and f"{n}(" not in text]
    assert not undocumented, f"public names missing from docs/plugin-reference.md: {undocumented}"
    for cls in (ptk.AttackContext, ptk.DefenseContext):
        missing = sorted(n for n in public_instance_attributes(cls) if f"ctx.{n}" not in text)
        assert not missing, f"{cls.__name__} members missing from docs/plugin-reference.md (as ctx.NAME): {missing}"
