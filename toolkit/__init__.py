"""ptk: data-poisoning attacks and defenses on image classifiers, as pluggy plugins.

The names below are the public API for plugin authors; everything else is private.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .version import DISTRIBUTION, __version__

_EXPORTS: dict[str, str] = {  # public name -> the module defining it, imported on first use
    "API_VERSION": "api",
    "GOALS": "api",
    "SUPPORTED_API_VERSIONS": "api",
    "Attack": "api",
    "DatasetSource": "api",
    "Defense": "api",
    "DefenseResult": "api",
    "ModelSpec": "api",
    "Poisoning": "api",
    "Predictor": "api",
    "ThreatModel": "api",
    "Target": "api",
    "Trigger": "api",
    "AttackContext": "context",
    "DefenseContext": "context",
    "Dataset": "data",
    "stratified_indices": "data",
    "imagefolder_cache": "datastore",
    "stored_datasets": "datastore",
    "EnsemblePredictor": "ensembles",
    "vote_prediction_and_tolerance": "ensembles",
    "DataCorrupt": "errors",
    "DataMissing": "errors",
    "PluginError": "errors",
    "ThreatModelViolation": "errors",
    "UsageError": "errors",
    "hookimpl": "hookspecs",
    "DEBIAN_FASHION_MNIST": "importers",
    "find_debian_fashion_mnist": "importers",
    "read_dataset": "importers",
    "Option": "options",
    "check_removal_count": "options",
    "fraction": "options",
    "non_negative": "options",
    "positive": "options",
    "positive_up_to": "options",
    "removal_count": "options",
    "share": "options",
    "is_tarball": "readers",
    "read_image_folder": "readers",
    "Recipe": "train",
    "autocast": "train",
    "epoch_batches": "train",
    "make_optimizer": "train",
    "optimizer_step": "train",
    "training_batch": "train",
}


def __getattr__(name: str) -> Any:
    """``ptk.NAME`` imports NAME's module on first use, so commands that train nothing (``ptk --help``,
    ``ptk sweep status``) start without importing torch."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ptk' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .api import (
        API_VERSION,
        GOALS,
        SUPPORTED_API_VERSIONS,
        Attack,
        DatasetSource,
        Defense,
        DefenseResult,
        ModelSpec,
        Poisoning,
        Predictor,
        ThreatModel,
        Target,
        Trigger,
    )
    from .context import AttackContext, DefenseContext
    from .data import Dataset, stratified_indices
    from .datastore import imagefolder_cache, stored_datasets
    from .ensembles import EnsemblePredictor, vote_prediction_and_tolerance
    from .errors import DataCorrupt, DataMissing, PluginError, ThreatModelViolation, UsageError
    from .hookspecs import hookimpl
    from .importers import DEBIAN_FASHION_MNIST, find_debian_fashion_mnist, read_dataset
    from .options import (
        Option,
        check_removal_count,
        fraction,
        non_negative,
        positive,
        removal_count,
        share,
    )
    from .readers import is_tarball, read_image_folder
    # the training kit: the pieces of ptk's own loop, for a defense with its own (see bilevel)
    from .train import Recipe, autocast, epoch_batches, make_optimizer, optimizer_step, training_batch

__all__ = [
    "API_VERSION", "DISTRIBUTION", "GOALS", "SUPPORTED_API_VERSIONS", "Attack", "AttackContext", "DataMissing", "Dataset",
    "DatasetSource", "Defense", "DefenseContext", "DefenseResult", "ModelSpec", "Option", "Poisoning",
    "Predictor", "Target", "ThreatModel", "ThreatModelViolation", "Trigger", "UsageError", "hookimpl",
    "stratified_indices", "__version__",
    # errors (all defined in ptk.errors)
    "DataCorrupt", "PluginError",
    # option checks and removal helpers
    "positive", "positive_up_to", "non_negative", "fraction", "share", "check_removal_count", "removal_count",
    # ensembles
    "EnsemblePredictor", "vote_prediction_and_tolerance",
    # data set plugins: image folders and archives, the data directory's store, importing
    "is_tarball", "read_image_folder", "stored_datasets", "imagefolder_cache", "read_dataset",
    "find_debian_fashion_mnist", "DEBIAN_FASHION_MNIST",
    # the training kit
    "Recipe", "autocast", "epoch_batches", "make_optimizer", "optimizer_step", "training_batch",
]
