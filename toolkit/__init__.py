"""ptk: data-poisoning attacks and defenses on image classifiers, as pluggy plugins.

The names below are the public API for plugin authors; everything else is private.
"""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    API_VERSION,
    SUPPORTED_API_VERSIONS,
    Attack,
    DataMissing,
    DatasetSource,
    Defense,
    DefenseResult,
    ModelSpec,
    Poisoning,
    Predictor,
    ThreatModel,
)
from .context import AttackContext, DefenseContext, Target, ThreatModelViolation  # noqa: E402
from .data import Dataset, stratified_indices  # noqa: E402
from .ensembles import EnsemblePredictor, vote_prediction_and_tolerance  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .options import (  # noqa: E402
    Option,
    UsageError,
    check_removal_count,
    fraction,
    non_negative,
    positive,
    removal_count,
)
from .readers import is_tarball, read_image_folder  # noqa: E402
# the training kit: the pieces of ptk's own loop, for a defense with its own (see bilevel)
from .train import Recipe, autocast, epoch_batches, make_optimizer, optimizer_step, training_batch  # noqa: E402

__all__ = [
    "API_VERSION", "SUPPORTED_API_VERSIONS", "Attack", "AttackContext", "DataMissing", "Dataset",
    "DatasetSource", "Defense", "DefenseContext", "DefenseResult", "ModelSpec", "Option", "Poisoning",
    "Predictor", "Target", "ThreatModel", "ThreatModelViolation", "UsageError", "hookimpl",
    "stratified_indices", "__version__",
    # option checks and removal helpers
    "positive", "non_negative", "fraction", "check_removal_count", "removal_count",
    # ensembles
    "EnsemblePredictor", "vote_prediction_and_tolerance",
    # image folders and archives (data set plugins)
    "is_tarball", "read_image_folder",
    # the training kit
    "Recipe", "autocast", "epoch_batches", "make_optimizer", "optimizer_step", "training_batch",
]
