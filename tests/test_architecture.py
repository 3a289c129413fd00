"""The import structure docs/architecture.md draws: no import circle among ptk's modules (counting imports
inside functions and under ``TYPE_CHECKING``), and the types plugins build on never reach the plugin loader."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> import name (pyproject.toml's package-dir)
PACKAGES = {"toolkit": "ptk", "plugins": "ptk_plugins"}
#: What a plugin author imports: none of it may import the loader, the runner or the CLI.
PUBLIC_TYPES = ("ptk.api", "ptk.types", "ptk.context", "ptk.options", "ptk.errors", "ptk.hookspecs")
LOADER = ("ptk.registry", "ptk.experiment", "ptk.cli", "ptk.executors", "ptk.sweep")


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (``from . import x`` counts as importing x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    # a package's __init__ re-exports its modules; edges *into* a package mean its __init__, so a module
    # importing ``ptk`` (the package) is not counted as importing everything ``ptk/__init__`` re-exports
    return {n: imports_of(n, p, known) for n, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def reach(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in g.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_checker_finds_a_circle_and_a_path():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert reach(g, "d") == {"a", "b", "c"}


def test_no_import_circle_among_ptks_modules():
    g = graph()
    # the packages' __init__ modules import their whole public surface: leave them out of the circle search
    inner = {n: {w for w in ws if w not in PACKAGES.values()} for n, ws in g.items() if n not in PACKAGES.values()}
    assert not cycles(inner), f"import circles: {cycles(inner)}"


def test_plugin_facing_types_never_reach_the_loader():
    g = graph()
    for name in PUBLIC_TYPES:
        bad = reach(g, name) & set(LOADER)
        assert not bad, f"{name} reaches {sorted(bad)}"


def test_built_in_plugins_import_only_ptks_public_surface():
    """A built-in plugin is written as a third party's would be: ``from ptk import ...`` (plus its own
    package's private helpers), never ptk's internals."""
    g = graph()
    for name, deps in g.items():
        if name.startswith("ptk_plugins"):
            internal = sorted(d for d in deps if d.startswith("ptk.") or d == "ptk." )
            assert not internal, f"{name} imports ptk internals {internal}"
