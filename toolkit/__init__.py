"""ptk: data-poisoning attacks and defenses on image classifiers, as pluggy plugins.

The names below are the public API for plugin authors; everything else is private.
"""

from .version import DISTRIBUTION, __version__
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
    "positive", "non_negative", "fraction", "share", "check_removal_count", "removal_count",
    # ensembles
    "EnsemblePredictor", "vote_prediction_and_tolerance",
    # data set plugins: image folders and archives, the data directory's store, importing
    "is_tarball", "read_image_folder", "stored_datasets", "imagefolder_cache", "read_dataset",
    "find_debian_fashion_mnist", "DEBIAN_FASHION_MNIST",
    # the training kit
    "Recipe", "autocast", "epoch_batches", "make_optimizer", "optimizer_step", "training_batch",
]
