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
from .hookspecs import hookimpl  # noqa: E402
from .options import Option, UsageError  # noqa: E402

__all__ = [
    "API_VERSION", "SUPPORTED_API_VERSIONS", "Attack", "AttackContext", "DataMissing", "Dataset",
    "DatasetSource", "Defense", "DefenseContext", "DefenseResult", "ModelSpec", "Option", "Poisoning",
    "Predictor", "Target", "ThreatModel", "ThreatModelViolation", "UsageError", "hookimpl",
    "stratified_indices", "__version__",
]
