"""``ptk run``: train clean, pick the target, poison, train poisoned, defend, evaluate.

Every setting is checked before the first training step. Results are written
after every model, so a run that dies part-way keeps what it finished.
"""

from __future__ import annotations

import difflib
import logging
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy
import torch

from .version import __version__
from .api import all_refusal, goal_refusal
from .contract import call_plugin, checked_defense_result, checked_model, checked_poisoning, checked_trigger
from .pipeline import defense_entry, plugin_entries
from .errors import DataMissing, UsageError
from .types import Poisoning, Trigger
from .cache import ModelCache, tensor_digest
from .compiled import resolve_compile
from .config import ExperimentConfig, short
from .data import stratified_indices
from .context import AttackContext, DefenseContext
from .session import Session
from .types import Target
from .evaluate import backdoor_asr, defense_row, model_row
from .html import MAX_THUMBS, RunImages, Thumb
from .options import resolve_options
from .paths import cache_dir, data_dir
from .registry import Entry, Registry
from .results import ModelRow, RunResults
from .progress import Timer
from .recipe import Recipe, named_recipe
from .train import predict_proba

log = logging.getLogger("ptk")


@dataclass
class Plan:
    """A config resolved against the registry: plugin entries and typed options."""

    config: ExperimentConfig
    dataset: Entry
    model: Entry
    attack: Entry
    defenses: list[Entry]
    options: dict[str, dict[str, Any]]
    recipe: Recipe
    device: torch.device
    compile_mode: str  # resolved for the device: see ptk.compiled
    skipped: dict[str, str] = field(default_factory=dict)  # defense name -> why `--defense all` left it out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return dev


def plan(config: ExperimentConfig, registry: Registry) -> Plan:
    """Resolve names and options; every usage error surfaces here, before any training."""
    dataset = registry.get("dataset", config.dataset)
    model = registry.get("model", config.model)
    attack = registry.get("attack", config.attack)
    names = [n for d in config.defenses if d != "none" for n in (registry.names("defense") if d == "all" else [d])]
    defenses: list[Entry] = []
    skipped: dict[str, str] = {}  # only defenses `all` brought in: a named one that cannot run is an error
    for name in dict.fromkeys(names):
        entry = defense_entry(registry, name)
        named = name in config.defenses
        why = goal_refusal(entry.plugin, attack.plugin) if named else all_refusal(entry.plugin, attack.plugin)
        if why is None:
            defenses.append(entry)
        elif named:
            raise UsageError(f"{why}; drop --defense {name}")
        else:
            skipped[name] = why
    used = {e.name: e for e in [dataset, model, attack, *plugin_entries(defenses)]}
    registered = {e.name for e in registry.all()}
    for owner in config.options:
        if owner not in registered and owner not in (RECIPE_OPTIONS, TRUSTED_OPTIONS):
            close = difflib.get_close_matches(owner, sorted(registered), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"options given for {owner!r}, which no installed plugin registers.{hint}")
        # options of a registered plugin this run does not use (say, a preset's ensemble.k) are ignored
    options = {name: resolve_options(name, e.plugin.options, config.options.get(name, {})) for name, e in used.items()}
    options.update({e.name: {} for e in defenses if e.name not in options})  # a pipeline: its stages' options
    recipe = plan_recipe(config)
    for name, why in skipped.items():
        log.warning("--defense all skips %s: %s", name, why)
    device = pick_device(config.device)
    return Plan(config, dataset, model, attack, defenses, options, recipe, device,
                resolve_compile(config.compile, device), skipped)


#: ``-o recipe.FIELD=VALUE`` (and ``[options.recipe]`` in a config file, ``recipe.FIELD`` in a grid) sets a
#: recipe field, as ``-o PLUGIN.OPTION`` sets a plugin's option.
RECIPE_OPTIONS = "recipe"


def plan_recipe(config: ExperimentConfig) -> Recipe:
    """The run's recipe: the named one, then --epochs / --batch-size / --lr, then ``-o recipe.FIELD=V``."""
    flags = {"epochs": config.epochs}
    if config.batch_size is not None:
        flags["batch_size"] = config.batch_size
    if config.lr is not None:
        flags["lr"] = config.lr
    recipe = named_recipe(config.recipe).with_values(flags)
    return recipe.with_values(config.options.get(RECIPE_OPTIONS, {}), where="-o recipe.FIELD")


def load_data(p: Plan, data_root: Path | None):
    """The plan's data set, subset as configured, the trusted hold-out (if any) taken out of its training set
    (``data_root`` None: the default data directory)."""
    return load_run_data(p, data_root)[0]


#: ``-o trusted.holdout=N``: N clean training images reserved before any training, for defenses that declare
#: trusted data (ThreatModel(trusted_data=True)) to calibrate on images no model of the run trained on.
TRUSTED_OPTIONS = "trusted"


def trusted_holdout(config: ExperimentConfig) -> int:
    """The run's ``-o trusted.holdout=N`` (0: none; trusted data then come from the training set)."""
    given = dict(config.options.get(TRUSTED_OPTIONS, {}))
    unknown = sorted(set(given) - {"holdout"})
    if unknown:
        raise UsageError(f"unknown option trusted.{unknown[0]}; the trusted options are: trusted.holdout=N")
    raw = given.get("holdout", 0)
    try:
        n = int(raw) if not isinstance(raw, bool) and float(raw) == int(float(raw)) else -1
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise UsageError(f"option trusted.holdout must be a whole number of images >= 0, got {short(raw)}")
    return n


def load_run_data(p: Plan, data_root: Path | None) -> tuple[Any, tuple[torch.Tensor, torch.Tensor] | None]:
    """The run's data and its trusted pool: ``-o trusted.holdout=N`` stratified, seeded training images taken
    out before any model trains (None without a hold-out)."""
    try:
        data = call_plugin(p.dataset, "load", data_dir(data_root), p.options[p.dataset.name])
    except DataMissing as exc:
        raise UsageError(str(exc)) from None
    data = data.subset(p.config.subset, p.config.test_subset, p.config.seed)
    n = trusted_holdout(p.config)
    if not n:
        return data, None
    if n > len(data.y_train) - 2 * data.num_classes:
        raise UsageError(f"trusted.holdout={n} leaves too few of the {len(data.y_train)} training images to train "
                         f"on; hold out fewer")
    pool = stratified_indices(data.y_train, n, p.config.seed + 11)
    rest = torch.ones(len(data.y_train), dtype=torch.bool, device=data.y_train.device)
    rest[pool] = False
    kept = type(data)(data.name, data.x_train[rest], data.y_train[rest], data.x_test, data.y_test, data.classes)
    return kept, (data.x_train[pool], data.y_train[pool])


def check_against_data(p: Plan, data) -> tuple[int, int]:
    """``(source, target class)`` of the run, after every check that needs the data: classes, target index,
    the attack's and each defense's ``check``. Shared by `ptk run` and `ptk sweep` (which checks every cell
    before its first training)."""
    config, ds_plugin = p.config, p.dataset.plugin
    source = data.class_index(config.source or ds_plugin.default_source or data.classes[0])
    target_class = data.class_index(config.target or ds_plugin.default_target or data.classes[1])
    if source == target_class:
        raise UsageError(f"source and target class are both {data.classes[source]!r}; pick two different classes")
    check_target_index(config.target_index, data, source)
    pool = int((data.y_test == source).sum())
    if config.target_index is None and config.target_rank >= pool:  # the clean model gets at most all of them right
        raise UsageError(f"--target-rank {config.target_rank}: the test set has only {pool} "
                         f"{data.classes[source]!r} images to pick a target from; pick a rank below {pool} "
                         "(a sweep's targets = N: at most that many)")
    call_plugin(p.attack, "check", data, source, target_class, p.options[p.attack.name])
    for entry in plugin_entries(p.defenses):  # a pipeline's stages, each with its own options
        call_plugin(entry, "check", data, p.options[entry.name])
    return source, target_class


def check_target_index(idx: int | None, data, source: int) -> None:
    if idx is None:
        return
    if not 0 <= idx < len(data.y_test):
        raise UsageError(f"--target-index {idx} is out of range: the test set has {len(data.y_test)} images")
    if int(data.y_test[idx]) != source:
        raise UsageError(
            f"--target-index {idx} is a {data.classes[int(data.y_test[idx])]!r} image, not of the source "
            f"class {data.classes[source]!r}"
        )


def target_order(probs: torch.Tensor, source: int, target_class: int, choice: str, seed: int) -> torch.Tensor:
    """Candidate order (positions in the source-class pool) for ``--target-rank``.

    Only images the clean model gets right are candidates (the attack must cause
    the error); all of the pool if it gets none right. ``hardest``: highest
    P(target class) first (the study's rule); ``random``: a uniform order seeded
    by ``seed`` (the unbiased protocol for success rates).
    """
    right = (probs.argmax(1) == source).nonzero().squeeze(1)
    candidates = right if len(right) else torch.arange(len(probs), device=probs.device)
    if choice == "hardest":
        return candidates[probs[candidates, target_class].argsort(descending=True, stable=True)]
    gen = torch.Generator().manual_seed(seed)
    return candidates[torch.randperm(len(candidates), generator=gen).to(candidates.device)]


def choose_target(p: Plan, data, clean_model, source: int, target_class: int) -> Target:
    """The ``--target-rank``-th (default: first) correctly classified test image of ``source`` in the order of
    ``--target-choice`` (default: the one the clean model finds most like ``target_class``).

    ``--target-index`` overrides the choice (it must be a source-class image).
    """
    idx = p.config.target_index
    if idx is None:
        pool = (data.y_test == source).nonzero().squeeze(1)
        if len(pool) == 0:
            raise UsageError(f"the test set has no image of the source class {data.classes[source]!r}")
        order = target_order(predict_proba(clean_model, data.x_test[pool]), source, target_class,
                             p.config.target_choice, p.config.seed)
        rank = p.config.target_rank
        if rank >= len(order):
            raise UsageError(f"--target-rank {rank}: the clean model classifies only {len(order)} "
                             f"{data.classes[source]!r} test images correctly; pick a rank below {len(order)}")
        idx = int(pool[order[rank]])
    return Target(idx, source, target_class, data.x_test[idx : idx + 1])


def versions(p: Plan) -> dict[str, str]:
    """Software and hardware a result depends on. CPU results are bit-reproducible on one kind of CPU, not across
    them (AVX2 and AVX-512 kernels sum in different orders), nor across thread counts (a sweep's Ray cells run
    with --cpus-per-cell threads), so the kernel ISA and torch's thread count are recorded too."""
    out = {"ptk": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch_threads": str(torch.get_num_threads())}
    if p.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(p.device)
    for e in [p.dataset, p.model, p.attack, *plugin_entries(p.defenses)]:
        out[e.dist] = e.version
    return out


@dataclass
class Run:
    """A run in progress: its results, written out (as results.json's dict) after every step."""

    results: RunResults
    save: Callable[[dict[str, Any]], None]

    def add_model(self, row: ModelRow) -> None:
        self.results.models.append(row)
        self.write()

    def write(self) -> None:
        self.save(self.results.to_dict())


def run_images(data, poisoning: Poisoning, poison_idx: torch.Tensor, trigger: Trigger | None,
               target: Target) -> RunImages:
    """The pixels report.html shows and results.json does not hold: the target image, the first
    :data:`~ptk.html.MAX_THUMBS` poisoned training images (with their label change, and the original where the
    attack changed the pixels) and, for a backdoor, the first test image not of its class, clean and triggered."""
    x_after = data.x_train if poisoning.x_train is None else poisoning.x_train
    thumbs = []
    for i in sorted(poison_idx.cpu().tolist())[:MAX_THUMBS]:
        before, after = data.x_train[i], x_after[i]
        old, new = data.classes[int(data.y_train[i])], data.classes[int(poisoning.y_train[i])]
        changed = poisoning.x_train is not None and not torch.equal(before, after.to(before.device))
        thumbs.append(Thumb(after.cpu().numpy(), f"#{i}: {old} \u2192 {new}" if old != new else f"#{i}: {old}",
                            before.cpu().numpy() if changed else None))
    example = []
    others = [] if trigger is None else (data.y_test != trigger.target_class).nonzero().flatten().tolist()
    if others:
        j = others[0]
        clean = data.x_test[j:j + 1]
        example = [Thumb(clean[0].cpu().numpy(), f"clean: {data.classes[int(data.y_test[j])]}"),
                   Thumb(trigger.apply(clean)[0].cpu().numpy(),
                         f"triggered (aimed at {data.classes[trigger.target_class]})")]
    return RunImages(target.image[0].cpu().numpy(), thumbs, len(poison_idx), example)


def run_models(p: Plan, session: Session, data, source: int, target_class: int, run: Run,
               on_error: Callable[[str, str], None] | None,
               on_images: Callable[[RunImages], None] | None = None,
               trusted: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Clean model, target, attack, poisoned model, then each defense; ``run`` saves after every model, and
    ``on_images`` gets the pixels report.html shows once the attack has poisoned."""
    results, attack_opts = run.results, p.options[p.attack.name]
    clean = session.train_tracked(data.x_train, data.y_train, desc="clean model")
    target = choose_target(p, data, clean.model, source, target_class)
    results.target = {"index": target.index, "source_class": data.classes[source],
                      "target_class": data.classes[target_class]}
    clean_row = model_row("clean", clean, data, target)
    run.add_model(clean_row)

    actx = AttackContext(session=session, data=data, options_of=p.options, clean_model=clean.model, target=target)
    poisoning = checked_poisoning(p.attack, call_plugin(p.attack, "poison", actx, attack_opts))
    trigger = checked_trigger(p.attack, poisoning, data)
    poison_idx = poisoning.poison_indices.to(p.device).long()
    poisoned_data = type(data)(data.name, poisoning.x_train if poisoning.x_train is not None else data.x_train,
                               poisoning.y_train.to(p.device), data.x_test, data.y_test, data.classes)
    results.attack = {"name": p.attack.name, "goal": p.attack.plugin.goal,
                      "poison_indices": sorted(poison_idx.cpu().tolist()),
                      "poisoned_labels_sha256": tensor_digest(poisoned_data.y_train), **poisoning.details}
    if trigger is not None:
        results.attack["trigger"] = {"target_class": data.classes[trigger.target_class],
                                     "description": trigger.description}
        # the clean row was written before the attack made the trigger; its ASR (the baseline) joins it now
        clean_row.backdoor_asr = backdoor_asr(clean.model, data.x_test, data.y_test, trigger)
    if on_images is not None:
        on_images(run_images(data, poisoning, poison_idx, trigger, target))
    poisoned = session.train_tracked(poisoned_data.x_train, poisoned_data.y_train, desc="poisoned model")
    run.add_model(model_row("poisoned", poisoned, data, target, trigger))

    for entry in p.defenses:
        ctx = DefenseContext(session=session, data=poisoned_data, options_of=p.options, poisoned_model=poisoned.model,
                             target=target, threat=entry.plugin.threat, attack_budget=len(poison_idx),
                             clean_labels=data.y_train, poison_indices=poison_idx, defense_name=entry.name,
                             trigger=trigger, trusted_pool=trusted)
        before = len(session.trained)
        try:
            with Timer() as timer:
                out = checked_defense_result(entry, entry.plugin.defend(ctx, p.options[entry.name]))
            reused = session.cached_training_cost(since=before)
            row = defense_row(entry.name, out, data, target, poison_idx, len(poisoned_data.y_train), trigger,
                              train_seconds=round(session.training_seconds(since=before), 3),
                              defense_seconds=round(timer.seconds, 3),
                              cost_seconds=None if reused is None else round(timer.seconds + reused, 3),
                              threat_model=entry.plugin.threat.describe() + (
                                  f" (held out: {len(trusted[1])} images no model trained on)"
                                  if trusted is not None and entry.plugin.threat.trusted_data else ""))
        except BaseException as exc:  # one failing defense (even one calling sys.exit) must not cost the others
            if isinstance(exc, KeyboardInterrupt):
                raise
            tb = traceback.format_exc()
            run.add_model(ModelRow.failure(entry.name, exc))
            if on_error:
                on_error(entry.name, tb)
        else:
            run.add_model(row)


def new_session(p: Plan, data, cache: ModelCache) -> Session:
    """The plan's training service: its model plugin (with where it came from, for the cache key), recipe,
    device and seed."""
    provenance = {"name": p.model.name, "distribution": p.model.dist, "version": p.model.version}
    return Session(data=data, model=p.model.plugin, model_options=p.options[p.model.name], provenance=provenance,
                   recipe=p.recipe, cache=cache, device=p.device, seed=p.config.seed, compile_mode=p.compile_mode)


def run_experiment(config: ExperimentConfig, registry: Registry, save: Callable[[dict[str, Any]], None],
                   data_root: Path | None = None, cache_root: Path | None = None, use_cache: bool = True,
                   on_error: Callable[[str, str], None] | None = None,
                   on_images: Callable[[RunImages], None] | None = None) -> dict[str, Any]:
    """Run one experiment; ``save`` is called with the results after every model, ``on_images`` (if given)
    with the images report.html shows (:func:`run_images`)."""
    p = plan(config, registry)
    data, trusted = load_run_data(p, data_root)
    source, target_class = check_against_data(p, data)
    data = data.to(p.device)
    trusted = None if trusted is None else (trusted[0].to(p.device), trusted[1].to(p.device))
    torch.use_deterministic_algorithms(p.device.type == "cpu", warn_only=True)

    session = new_session(p, data, ModelCache(cache_dir(cache_root) if use_cache else None))
    # build the model once now, so a broken model plugin fails before any training
    probe = call_plugin(p.model, "build", data.num_classes, data.image_shape, p.options[p.model.name])
    checked_model(p.model, probe, data.num_classes, tuple(data.image_shape))
    pretrained = ({"sha256": probe.pretrained_sha256, "source": str(getattr(probe, "pretrained_source", ""))}
                  if getattr(probe, "pretrained_sha256", None) else None)
    results = RunResults(
        status="running",
        config=config.to_dict(),
        resolved={"recipe": p.recipe.to_dict(), "options": p.options, "device": str(p.device),
                  "trainer": session.trainer, **({"pretrained": pretrained} if pretrained else {}),
                  "source_class": data.classes[source], "target_class": data.classes[target_class],
                  **({"trusted_holdout": len(trusted[1])} if trusted is not None else {})},
        versions=versions(p),
        data={"name": data.name, "fingerprint": data.fingerprint(), "train_size": len(data.y_train),
              "test_size": len(data.y_test), "classes": data.classes},
        plugins={e.name: {"kind": e.kind, "distribution": e.dist, "version": e.version,
                          **({"threat_model": e.plugin.threat.__dict__} if e.kind == "defense" else {})}
                 for e in [p.dataset, p.model, p.attack, *plugin_entries(p.defenses)]},
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        skipped_defenses=dict(p.skipped) or None,
    )
    run = Run(results, save)

    try:
        run_models(p, session, data, source, target_class, run, on_error, on_images, trusted)
    except Exception as exc:  # the attack or a clean/poisoned training failed: say so in results.json
        results.status = "failed"
        results.error = f"{type(exc).__name__}: {exc}"
        run.write()
        raise
    results.cache = {"hits": session.cache.hits, "misses": session.cache.misses}
    results.status = "failed" if results.failures else "complete"
    results.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run.write()
    return results.to_dict()
