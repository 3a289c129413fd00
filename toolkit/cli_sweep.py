"""``ptk sweep``: run a grid of experiments into one SQLite store, and report success rates from it."""

from __future__ import annotations

from pathlib import Path

import click

from .options import UsageError


@click.group()
def sweep() -> None:
    """Grids of runs (attacks x defenses x targets x seeds x options) in one record store."""


@sweep.command("run")
@click.argument("grid_file", type=click.Path(path_type=Path))
@click.option("--db", type=click.Path(path_type=Path), help="record store (default runs/<grid name>/sweep.db)")
@click.option("--executor", type=click.Choice(["local"]), default="local", show_default=True,
              help="local: cells one after another in this process, sharing the model cache")
@click.option("--data-dir", type=click.Path(path_type=Path), help="ptk data directory (or $PTK_DATA_DIR)")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="model cache directory (or $PTK_CACHE_DIR)")
def run_sweep(grid_file: Path, db: Path | None, executor: str, data_dir: Path | None, cache_dir: Path | None) -> None:
    """Run every cell of GRID_FILE not yet finished in the store; rerun to resume.

    GRID_FILE is a --config TOML file plus a [grid] table of lists, e.g.
    [grid] seed = [0, 1], targets = 5, "labelflip.budget" = [10, 50].
    """
    import torch

    from .config import PRESETS
    from .experiment import pick_device
    from .paths import cache_dir as resolve_cache
    from .registry import load_registry
    from .store import Store
    from .sweep import check_cells, expand, rates_table, read_grid, run_cells, success_rates

    if not grid_file.exists():
        raise UsageError(f"grid file {grid_file} does not exist")
    base, grid = read_grid(grid_file, PRESETS)
    cells = expand(base, grid, str(grid_file))
    registry = load_registry()
    check_cells(cells, registry, data_dir)
    db = db or Path("runs") / grid_file.stem / "sweep.db"
    store = Store(db)
    try:
        for cell in cells:
            store.add_cell(cell.id, cell.config.to_dict(), cell.values)
        device = pick_device(cells[0].config.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        click.echo(f"sweep {grid_file}: {len(cells)} cells into {db}", err=True)
        counts = run_cells(cells, store, registry, data_dir, resolve_cache(cache_dir), db.parent / "cells", name,
                           lambda line: click.echo(line, err=True))
        click.echo(rates_table(success_rates(store.models())))
    finally:
        store.close()
    click.echo(f"\n{counts['complete']} complete, {counts['failed']} failed, {counts['skipped']} already done; "
               f"store: {db}")
    if counts["failed"]:
        click.get_current_context().exit(1)


@sweep.command("report")
@click.argument("db", type=click.Path(path_type=Path))
def report(db: Path) -> None:
    """Attack success rate (95% Wilson interval), mean accuracy and AUROC per setting and model."""
    from .store import Store
    from .sweep import rates_table, success_rates

    if not db.exists():
        raise UsageError(f"record store {db} does not exist; `ptk sweep run GRID.toml` makes one")
    store = Store(db)
    try:
        click.echo(rates_table(success_rates(store.models())))
    finally:
        store.close()
