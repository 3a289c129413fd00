"""``ptk bench``: score defenses against every attack of a fixed suite, and the leaderboard of a bench store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_sweep import Execution, executor_options, finish, open_store
from .errors import UsageError


@click.group()
def bench() -> None:
    """Fixed suites of cells every defense is scored on, with paired statistics (docs/bench.md)."""


@bench.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the suites as JSON")
def list_suites(as_json: bool) -> None:
    """The suites shipped with ptk: name, version, cells, attacks and their measured cost."""
    from .suite import load_suite, shipped

    suites = [load_suite(name).summary() for name in sorted(shipped())]
    if as_json:
        click.echo(json.dumps(suites, indent=2))
        return
    for s in suites:
        click.echo(f"{s['name']} (version {s['version']}, {s['cells']} cells, preset {s['preset']}): "
                   f"{s['description']}")
        click.echo(f"  attacks: {', '.join(s['attacks'])}")
        click.echo(f"  cost: {s['cost']}")


def store_done(db: Path) -> set[tuple[str, str]]:
    """(suite cell key, model) pairs with a finished row in the store ``db`` (empty when there is none)."""
    from .leaderboard import group_cells

    if not db.exists():
        return set()
    store = open_store(db)
    try:
        cells = group_cells(store.models())
    finally:
        store.close()
    return {(key, name) for key, models in cells.items() for name in models}


def bench_defenses(suite, names: tuple[str, ...], registry) -> dict[str, list[str]]:
    """The defenses to run per attack label. A named defense runs against every attack of the suite it can
    face and skips the others with a note (a backdoor defense on a suite of targeted and backdoor attacks
    is scored on the backdoors); one that can face none of them is refused. ``all``: every installed defense
    that can face the attack and does not declare a prohibitive cost, the others skipped with a note."""
    from .api import all_refusal, goal_refusal
    from .pipeline import defense_entry

    out: dict[str, list[str]] = {}
    faced: dict[str, list[str]] = {n: [] for n in names if n != "all"}
    reasons: dict[str, str] = {}
    for a in suite.attacks:
        attack = registry.get("attack", a.attack).plugin
        chosen = []
        for name in dict.fromkeys(n for d in names for n in (registry.names("defense") if d == "all" else [d])):
            defense = defense_entry(registry, name).plugin
            why = goal_refusal(defense, attack) if name in names else all_refusal(defense, attack)
            if why is None:
                chosen.append(name)
                if name in faced:
                    faced[name].append(a.label)
            else:
                reasons.setdefault(name, why)
                how = "--defense all skips" if name not in names else "skips"
                click.echo(f"{how} {name} on {a.label}: {why}", err=True)
        out[a.label] = chosen
    for name, labels in faced.items():
        if not labels:
            raise UsageError(f"suite {suite.name}: no attack of it can be scored for {name}: {reasons[name]}; "
                             f"pick a suite with such attacks, or drop --defense {name}")
    return out


@bench.command("run")
@click.argument("suite_name", metavar="SUITE")
@click.option("--defense", "defenses", multiple=True,
              help="a defense to score (repeat for more; `all`: every installed one); the undefended model is "
                   "always scored")
@click.option("--db", type=click.Path(path_type=Path), help="record store (default runs/bench-<suite>/bench.db)")
@executor_options
def run_bench(suite_name: str, defenses: tuple[str, ...], db: Path | None, **execution) -> None:
    """Run SUITE (a name from `ptk bench list`, or a suite file) for the named defenses and the undefended model.

    Every defense runs on the same cells as the others, with the same clean and poisoned models; a defense
    already in the store is not rerun, so `ptk bench run quick --defense mine` on a store that holds the
    built-ins adds one row per attack. Rerun the same command to resume.
    """
    from .leaderboard import build, text_table
    from .registry import load_registry
    from .suite import load_suite, suite_cells, suite_key

    suite = load_suite(suite_name)
    db = db or Path("runs") / f"bench-{suite.name}" / "bench.db"
    identity = f"{suite.name} {suite.version}"
    if db.exists():
        store = open_store(db)
        try:
            held = store.meta("suite")
        finally:
            store.close()
        if held is None or held != identity:
            raise UsageError(f"{db} holds {'a sweep, not a bench suite' if held is None else 'suite ' + held}; "
                             f"give suite {identity} its own --db")
    registry = load_registry()
    chosen = bench_defenses(suite, tuple(d.strip() for v in defenses for d in v.split(",") if d.strip()), registry)
    done = store_done(db)
    todo: dict[str, list[str]] = {}
    for a in suite.attacks:
        for seed, target in a.cells:
            key = suite_key(a.label, seed, target)
            missing = [d for d in chosen[a.label] if (key, d) not in done]
            if missing or (key, "poisoned") not in done:
                todo[key] = missing
    cells = suite_cells(suite, todo)
    counts = {"complete": 0, "failed": 0, "skipped": suite.cell_count}
    if cells:
        from .cli_sweep import drive

        counts = drive(cells, db, Execution(**execution), f"bench {identity}", suite.base.get("device", "auto"),
                       registry, meta={"suite": identity})
        counts["skipped"] = suite.cell_count - len(cells)
    else:
        click.echo(f"bench {identity}: every cell already holds these defenses in {db}", err=True)
    store = open_store(db)
    try:
        click.echo("\n" + text_table(build(store.models(), suite.summary())))
    finally:
        store.close()
    finish(counts, f"store: {db}; `ptk bench report {db}` writes the leaderboard")


@bench.command("report")
@click.argument("db", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="folder for leaderboard.md, report.html and leaderboard.json (default: the store's folder)")
def report(db: Path, out: Path | None) -> None:
    """The leaderboard: per attack and model, success rate with its Wilson interval, accuracy cost, AUROC,
    seconds, and a rank from paired McNemar tests (Holm-corrected) on the cells every model shares."""
    from .atomic import write_json, write_text
    from .leaderboard import build, markdown, text_table
    from .suite import load_suite, shipped

    store = open_store(db)
    try:
        held = store.meta("suite")
        rows = list(store.models())
    finally:
        store.close()
    if held is None:
        raise UsageError(f"{db} is a sweep store, not a bench store: `ptk sweep report {db}` reports it")
    name, version = held.rsplit(" ", 1)
    suite = load_suite(name).summary() if name in shipped() else {"name": name}
    suite["version"] = int(version)  # the version that ran, whatever ships now
    board = build(rows, suite)
    from .paths import make_folder

    out = make_folder(out or db.parent)
    write_text(out / "leaderboard.md", markdown(board))
    write_json(out / "leaderboard.json", board)
    from .html import write_bench_html

    written = [out / "leaderboard.md", write_bench_html(out, board), out / "leaderboard.json"]
    click.echo(text_table(board))
    for note in board["notes"]:
        click.echo(f"note: {note}")
    click.echo("\nwrote " + ", ".join(str(p) for p in written))


@bench.command("draw")
@click.option("--preset", help="preset of the run settings (quick, study)")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="a --config TOML file")
@click.option("--seed", "seeds", type=int, multiple=True, required=True, help="a seed (repeat for more)")
@click.option("--targets", type=click.IntRange(min=1), required=True, help="targets per seed")
@click.option("-o", "assignments", multiple=True, metavar="PLUGIN.OPTION=VALUE", help="a plugin or recipe option")
@click.option("--data-dir", type=click.Path(path_type=Path), help="ptk data directory (or $PTK_DATA_DIR)")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="model cache directory (or $PTK_CACHE_DIR)")
def draw(preset: str | None, config_file: Path | None, seeds: tuple[int, ...], targets: int,
         assignments: tuple[str, ...], data_dir: Path | None, cache_dir: Path | None) -> None:
    """Draw a suite's targets once with the random protocol and print them as a suite file's `cells`.

    Per seed, the clean model is trained (or read from the cache) and TARGETS source-class test images it
    gets right are drawn in a seeded uniform order (`--target-choice random`).
    """
    from dataclasses import replace

    from .config import build_config
    from .registry import load_registry
    from .suite import draw_targets

    base = build_config(preset, config_file, {}, (), assignments)
    registry = load_registry()
    pairs = [[seed, index] for seed in seeds
             for index in draw_targets(replace(base, seed=seed, defenses=["none"]), targets, registry, data_dir,
                                       cache_dir)]
    click.echo("cells = [" + ", ".join(f"[{s}, {t}]" for s, t in pairs) + "]")
