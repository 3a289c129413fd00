"""Loading plugins through the ``ptk`` entry-point group and indexing what they register.

Each entry point is imported and validated on its own, so one broken plugin
(import error, misspelled hook, hook that raises, unsupported API version) is
recorded with its error and distribution while every other plugin still works.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .api import GOALS, SUPPORTED_API_VERSIONS, Attack, DatasetSource, Defense, ModelSpec, Plugin
from .errors import PluginError, UsageError

GROUP = "ptk"
KINDS = {"attack": Attack, "defense": Defense, "dataset": DatasetSource, "model": ModelSpec}
HOOK_OF_KIND = {"attack": "register_attacks", "defense": "register_defenses",
                "dataset": "register_datasets", "model": "register_models"}


@dataclass
class Entry:
    """One registered attack/defense/dataset/model and where it came from."""

    plugin: Plugin
    source: str  # the entry-point (or in-process) plugin name
    dist: str
    version: str

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def kind(self) -> str:
        return self.plugin.kind


@dataclass
class Broken:
    source: str
    dist: str
    version: str
    error: str


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    broken: list[Broken] = field(default_factory=list)
    pm: pluggy.PluginManager = field(default_factory=lambda: new_manager())

    def all(self) -> Iterable[Entry]:
        for kind in KINDS:
            yield from sorted(self.entries[kind].values(), key=lambda e: e.name)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        """The entry called ``name``, or a UsageError listing the names and the closest match."""
        table = self.entries[kind]
        if name in table:
            return table[name]
        for b in self.broken:
            if b.source == name:
                raise PluginError(f"{kind} {name!r} comes from plugin {b.source} ({b.dist}), which failed to load: {b.error}")
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        # A broken plugin may be the one that would have registered ``name``: say which and why.
        hint += "".join(f" Plugin {b.source} ({b.dist}) failed to load and may provide it: {b.error}"
                        for b in self.broken)
        raise UsageError(f"unknown {kind} {name!r}; {kind}s are: {', '.join(sorted(table)) or 'none'}.{hint}")

    def add_plugin(self, obj: Any, source: str, dist: str = "(in-process)", version: str = "") -> None:
        """Register a plugin object (a module or any object with hookimpls) and collect what it registers.

        Used for entry points and, in tests and notebooks, for in-process plugins.
        """
        try:
            self.pm.register(obj, name=source)
            self.pm.check_pending()
        except Exception as exc:  # misspelled hook or bad signature
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            self.broken.append(Broken(source, dist, version, f"{type(exc).__name__}: {exc}{hook_hint(obj)}"))
            return
        collected: list[Plugin] = []
        try:
            for kind, hook in HOOK_OF_KIND.items():
                for impl in getattr(self.pm.hook, hook).get_hookimpls():
                    if impl.plugin is obj:
                        impl.function(register=lambda p, _k=kind: collected.append(check_plugin(p, _k)))
        except Exception as exc:
            self.pm.unregister(obj)
            self.broken.append(Broken(source, dist, version, f"{type(exc).__name__}: {exc}"))
            return
        for plugin in collected:
            table = self.entries[plugin.kind]
            if plugin.name in table:
                other = table[plugin.name]
                raise PluginError(
                    f"{plugin.kind} name {plugin.name!r} is registered twice: by {other.dist} "
                    f"(plugin {other.source}) and by {dist} (plugin {source}); uninstall one of them"
                )
            table[plugin.name] = Entry(plugin, source, dist, version)


def hook_hint(obj: Any) -> str:
    """' Did you mean register_defenses?' for each hook implementation whose name is not a ptk hook."""
    known = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), f"{GROUP}_spec")]
    impls = [n for n in dir(obj) if hasattr(getattr(obj, n, None), f"{GROUP}_impl") and n not in known]
    return "".join(f" Did you mean {close[0]} (not {n})?"
                   for n in impls if (close := difflib.get_close_matches(n, known, n=1)))


def check_plugin(plugin: Any, kind: str) -> Plugin:
    """Refuse objects of the wrong kind, without a name, declaring an unsupported API version, or (attacks)
    an unknown goal or a goal its API version does not have (goals other than ``target`` came with version 2);
    (defenses) goals that are not attack goals."""
    base = KINDS[kind]
    if not isinstance(plugin, base):
        raise TypeError(f"register_{kind}s registered {plugin!r}, which is not a ptk.{base.__name__}")
    if not plugin.name:
        raise TypeError(f"{type(plugin).__name__} has no name")
    if plugin.api_version not in SUPPORTED_API_VERSIONS:
        raise TypeError(
            f"{kind} {plugin.name!r} declares plugin API version {plugin.api_version}; this ptk supports "
            f"{', '.join(map(str, SUPPORTED_API_VERSIONS))}: upgrade ptk or install a matching plugin version"
        )
    if kind == "attack" and plugin.goal not in GOALS:
        raise TypeError(f"attack {plugin.name!r} declares goal {plugin.goal!r}; goals are: {', '.join(GOALS)}")
    if kind == "attack" and plugin.goal != "target" and plugin.api_version < 2:
        raise TypeError(f"attack {plugin.name!r} declares goal {plugin.goal!r} with plugin API version "
                        f"{plugin.api_version}; goals other than 'target' need api_version = 2")
    if kind == "defense" and plugin.goals is not None and (not plugin.goals or set(plugin.goals) - set(GOALS)):
        raise TypeError(f"defense {plugin.name!r} declares goals {plugin.goals!r}; give one or more of: "
                        f"{', '.join(GOALS)} (or leave goals = None to follow the threat model)")
    for option in plugin.options:  # a default that fails its own check would surface only after training
        try:
            option.parse(option.default, plugin.name)
        except UsageError as exc:
            raise TypeError(f"{kind} {plugin.name!r}: the default of option {option.name!r} fails its own check "
                            f"({exc}); fix the Option's default") from None
    return plugin


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(entry_points: bool = True, only: Callable[[md.EntryPoint], bool] | None = None) -> Registry:
    """A registry of every installed plugin (the ``ptk`` entry-point group); with ``only``, of the entry points
    for which ``only(entry_point)`` is true (the others are not imported)."""
    reg = Registry()
    if not entry_points:
        return reg
    for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
        if only is not None and not only(ep):
            continue
        dist = ep.dist.metadata["Name"] if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else ""
        try:
            obj = ep.load()
        except Exception as exc:
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            reg.broken.append(Broken(ep.name, dist, version, f"import failed: {tb}"))
            continue
        reg.add_plugin(obj, ep.name, dist, version)
    return reg
