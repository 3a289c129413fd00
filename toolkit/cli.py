"""The ``ptk`` command line: run, rerun, plugins, data."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from .version import __version__
from .cli_bench import bench as bench_commands
from .cli_data import data as data_commands
from .cli_sweep import sweep as sweep_commands
from .config import COMPILE_MODES, PRESETS, ExperimentConfig, build_config
from .errors import PluginError, UsageError
from .paths import check_folder

RUN_FLAGS = ("dataset", "model", "attack", "recipe", "epochs", "batch_size", "lr", "seed", "subset",
             "test_subset", "source", "target", "target_index", "target_choice", "target_rank", "device",
             "compile")


def load_registry(*args: Any, **kwargs: Any):
    """:func:`ptk.registry.load_registry`, imported when a command needs plugins (it imports torch and every
    plugin): ``ptk --help`` and ``ptk sweep status`` start without it."""
    from .registry import load_registry as load

    return load(*args, **kwargs)


def fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    click.get_current_context().exit(code)


class PtkGroup(click.Group):
    """Maps failures to one-line messages and exit codes, for the console script and CliRunner alike:
    usage errors exit 2, plugin errors 1 (naming the plugin), Ctrl-C 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except PluginError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted: finished models stay cached; rerun the same command to resume.", err=True)
            ctx.exit(130)


@click.group(cls=PtkGroup)
@click.version_option(__version__, prog_name="ptk")
def cli() -> None:
    """ptk: data-poisoning attacks and defenses on image classifiers, as plugins."""
    logging.basicConfig(format="%(message)s", level=logging.INFO)


def recorded_run(out: Path) -> dict[str, Any] | None:
    """The results.json a run folder holds, or None if it holds none (or an unreadable one)."""
    try:
        found = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def check_out(out: Path, overwrite: bool, config: ExperimentConfig) -> None:
    """Refuse an --out that would lose work or fail late, before any training.

    An interrupted run is resumed only by the same config: another config would
    take it over and replace its results. Writability is tried now, not after
    the first model has trained for an hour.
    """
    check_folder(out)
    for name in ("results.json", "report.md"):  # what a run writes: a folder there would fail it after training
        if (out / name).is_dir():
            raise UsageError(f"--out {out}: {out / name} is a folder, so the run could not write its {name}; "
                             "move it away or pick another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        found = recorded_run(out)
        if found is None:
            raise UsageError(f"--out {out} is a non-empty folder that holds no ptk run; pick another folder "
                             "or pass --overwrite")
        if found.get("status") != "running":
            raise UsageError(f"--out {out} already holds a run; pick another folder or pass --overwrite "
                             "(models it finished are cached and are not retrained)")
        if found.get("config") != json.loads(json.dumps(config.to_dict())):
            raise UsageError(f"--out {out} holds an interrupted run with other settings; rerun the command "
                             f"that started it to resume it (its settings are in {out}/results.json), pick another "
                             "folder, or pass --overwrite")


def execute(config: ExperimentConfig, out: Path | None, overwrite: bool, data_dir: Path | None,
            cache_dir: Path | None, no_cache: bool) -> None:
    """Run an experiment into ``out`` and print the table; maps failures to exit codes."""
    import torch

    from .experiment import run_experiment
    from .html import write_run_html
    from .report import text_table, write_report, write_results

    out = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    check_out(out, overwrite, config)
    registry = load_registry()
    errors_log = out / "errors.log"

    def on_error(name: str, tb: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        with open(errors_log, "a") as f:
            f.write(f"--- defense {name} ---\n{tb}\n")
        click.echo(f"defense {name} failed: {tb.strip().splitlines()[-1]} (traceback in {errors_log})", err=True)

    images = []  # the pixels report.html shows, handed over once the attack has run
    try:
        results = run_experiment(config, registry, save=lambda r: write_results(out, r), data_root=data_dir,
                                 cache_root=cache_dir, use_cache=not no_cache, on_error=on_error,
                                 on_images=images.append)
    except Exception as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            fail("the GPU ran out of memory; lower --batch-size (or --subset) and run again", 1)
        raise
    write_report(out, results)
    page = write_run_html(out, results, images[-1] if images else None)
    click.echo(text_table(results))
    charts = ", ".join(str(out / n) for n in ("target_probs.png", "backdoor_asr.png") if (out / n).exists())
    click.echo(f"\nwrote {out / 'results.json'}, {out / 'report.md'}, {page}, {charts}")
    if results["status"] != "complete":
        fail(f"{len([m for m in results['models'] if m.get('failed')])} defense(s) failed; see {errors_log}", 1)


@cli.command()
@click.option("--attack", help="attack plugin (default labelflip)")
@click.option("--defense", "defenses", multiple=True, help="defense plugin; repeat or comma-separate, or 'all' / 'none'")
@click.option("--dataset", help="dataset plugin (default cifar10)")
@click.option("--model", help="model plugin (default resnet18)")
@click.option("-o", "--option", "assignments", multiple=True, metavar="PLUGIN.KEY=VALUE", help="plugin option")
@click.option("--preset", type=str, help="study (default: the seed study's CIFAR-10 setup) or quick (digits, under a minute on a CPU)")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file with the same settings")
@click.option("--recipe", help="training recipe: study (the seed's Adam 1e-4), fast (SGD Nesterov, the published "
              "ResNet-18 hyperparameters) or published; `ptk recipes` lists every field, -o recipe.FIELD=V sets one")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@click.option("--subset", type=int, help="stratified subset of N training images")
@click.option("--test-subset", type=int, help="stratified subset of N test images")
@click.option("--source", help="source class of the target image (name or index)")
@click.option("--target", help="class the attacker wants the target predicted as")
@click.option("--target-index", type=int, help="test index of the target image (default: chosen by the clean model)")
@click.option("--target-choice", type=click.Choice(["hardest", "random"]),
              help="order of candidate targets: highest P(target class) first (default) or seeded random")
@click.option("--target-rank", type=int, help="take the K-th candidate target of that order (default 0)")
@click.option("--device", help="auto (CUDA if present), cpu, cuda, cuda:N")
@click.option("--compile", type=click.Choice(COMPILE_MODES),
              help="torch.compile the training step: auto (default: reduce-overhead, i.e. CUDA graphs, on CUDA; off "
                   "on the CPU), off, default, reduce-overhead, max-autotune, aot_eager")
@click.option("--out", type=click.Path(path_type=Path), help="run folder (default runs/<timestamp>)")
@click.option("--overwrite", is_flag=True, help="allow --out to be an existing run folder")
@click.option("--data-dir", type=click.Path(path_type=Path), help="ptk data directory (or $PTK_DATA_DIR)")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="model cache directory (or $PTK_CACHE_DIR)")
@click.option("--no-cache", is_flag=True, help="train every model afresh and cache nothing")
def run(defenses, assignments, preset, config_file, out, overwrite, data_dir, cache_dir, no_cache, **flags) -> None:
    """Train clean and poisoned models, apply defenses, and write a report."""
    config = build_config(preset, config_file, flags, defenses, assignments)
    execute(config, out, overwrite, data_dir, cache_dir, no_cache)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="folder for the repeat (default RUN_DIR/rerun-<time>)")
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--cache-dir", type=click.Path(path_type=Path))
@click.option("--no-cache", is_flag=True)
def rerun(run_dir: Path, out, data_dir, cache_dir, no_cache) -> None:
    """Repeat a run from the config recorded in RUN_DIR/results.json."""
    path = run_dir / "results.json"
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # missing, a directory, not UTF-8, not JSON
        raise UsageError(f"{path} is not a ptk results file ({type(exc).__name__}: {str(exc)[:200]})") from None
    recorded = found.get("config") if isinstance(found, dict) else None
    if not isinstance(recorded, dict):
        raise UsageError(f"{path} is not a ptk results file (no \"config\" object in it); rerun a folder "
                         "`ptk run` wrote")
    config = ExperimentConfig.from_dict(recorded, where=str(path))
    execute(config, out or run_dir / time.strftime("rerun-%Y%m%d-%H%M%S"), False, data_dir, cache_dir, no_cache)


def describe_entry(e) -> dict[str, Any]:
    from .api import defense_goals

    d = {"name": e.name, "kind": e.kind, "description": e.plugin.description, "plugin": e.source,
         "distribution": e.dist, "version": e.version,
         "options": [{"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help,
                      **({"choices": list(o.choices)} if o.choices else {})} for o in e.plugin.options]}
    if e.kind == "attack":
        d["goal"] = e.plugin.goal
    if e.kind == "defense":
        d["threat_model"] = dict(e.plugin.threat.__dict__)
        d["goals"] = list(defense_goals(e.plugin))
        d["cost"] = e.plugin.cost
    return d


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(name: str | None, as_json: bool) -> None:
    """List registered attacks, defenses, datasets and models (or show NAME's options)."""
    reg = load_registry()
    entries = [describe_entry(e) for e in reg.all()]
    broken = [b.__dict__ for b in reg.broken]
    if name:
        entries = [e for e in entries if e["name"] == name]
        broken = [b for b in broken if b["source"] == name]
        if not entries and broken:
            b = broken[0]
            raise PluginError(f"plugin {name!r} ({b['dist']} {b['version']}) is BROKEN: {b['error']}")
        if not entries:
            all_names = sorted({e.name for e in reg.all()})
            raise UsageError(f"no plugin registers {name!r}; names are: {', '.join(all_names)}")
    if as_json:
        click.echo(json.dumps({"plugins": entries, "broken": broken}, indent=2))
        return
    width = max([22] + [len(e["name"]) for e in entries])  # names line up, art-spectral-signatures included
    indent = " " * (width + 9)
    for e in entries:
        click.echo(f"{e['kind']:8} {e['name']:{width}} {e['distribution']} {e['version']}  {e['description']}")
        if "goal" in e:
            click.echo(f"{indent}goal: {e['goal']}")
        if "threat_model" in e:
            tm = e["threat_model"]
            trigger = ", knows trigger=True" if tm["knows_trigger"] else ""
            click.echo(f"{indent}assumes: knows target={tm['knows_target']}, trusted data={tm['trusted_data']}, "
                       f"uses poisoned model={tm['uses_poisoned_model']}{trigger}")
            click.echo(f"{indent}defends goals: {', '.join(e['goals'])}")
            if e.get("cost"):
                click.echo(f"{indent}cost: {e['cost']} (left out of --defense all; name it to run it)")
        if name:
            for o in e["options"]:
                choices = f" (one of {', '.join(map(str, o['choices']))})" if "choices" in o else ""
                click.echo(f"    -o {e['name']}.{o['name']}={o['default']}  [{o['type']}] {o['help']}{choices}")
    for b in broken:
        click.echo(f"BROKEN   {b['source']:{width}} {b['dist']} {b['version']}  {b['error']}")


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--preset", type=str, help="show the recipe a preset trains with (its --epochs, --batch-size, --lr)")
def recipes(name: str | None, as_json: bool, preset: str | None) -> None:
    """List the training recipes: every field, its value in each recipe, and why."""
    from .experiment import plan_recipe
    from .recipe import FIELDS, RECIPES, named_recipe

    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; presets are: {', '.join(PRESETS)}")
        table = {f"{preset} preset": plan_recipe(ExperimentConfig.from_dict(PRESETS[preset], "preset"))}
    elif name is not None:
        table = {name: named_recipe(name)}
    else:
        table = {n: named_recipe(n) for n in RECIPES}
    if as_json:
        click.echo(json.dumps({"recipes": {n: r.to_dict() for n, r in table.items()},
                               "fields": {k: f.why for k, f in FIELDS.items()}}, indent=2))
        return
    names = list(table)
    width = max(map(len, FIELDS))
    click.echo(f"{'field':{width}}  " + "  ".join(f"{n:>10}" for n in names) + "  why")
    for key, spec in FIELDS.items():
        values = "  ".join(f"{str(getattr(table[n], key)):>10}" for n in names)
        click.echo(f"{key:{width}}  {values}  {spec.why}")
    click.echo("\nSet a field for one run with -o recipe.FIELD=VALUE (e.g. -o recipe.momentum=0.85); "
               "--epochs, --batch-size and --lr set theirs.")


def main() -> None:
    cli()


cli.add_command(data_commands)
cli.add_command(sweep_commands)
cli.add_command(bench_commands)
