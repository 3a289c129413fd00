"""What users had before this layout still works: the same entry points and plugin names, the same sweep cell
ids for the same settings (so a grid rerun skips finished cells), and a sweep store written by ptk 0.1.0."""

from __future__ import annotations

import shutil

from ptk.config import PRESETS, ExperimentConfig, merge
from ptk.sweep import cell_id

from .fixtures import PYPROJECT, ROOT

#: The entry points and plugins of ptk 0.1.0 (as `ptk plugins --json` listed them, commit 0189f1f)
ENTRY_POINTS_0_1_0 = {"resnet18", "digits", "labelflip", "ensemble", "image-datasets", "loss-outliers", "influence",
                      "bilevel", "activation-clustering", "art-backdoor", "art-spectral-signatures", "art-strip",
                      "art-roni", "art-clean-label-backdoor", "art-sleeper-agent", "art-gradient-matching",
                      "art-bullseye-polytope"}
PLUGINS_0_1_0 = {
    "attack": {"art-backdoor", "art-bullseye-polytope", "art-clean-label-backdoor", "art-gradient-matching",
               "art-sleeper-agent", "labelflip"},
    "dataset": {"cifar10", "digits", "fashion-mnist", "imagefolder"},
    "defense": {"activation-clustering", "art-roni", "art-spectral-signatures", "art-strip", "bilevel",
                "bilevel-trusted", "ensemble", "influence", "loss-outliers"},
    "model": {"resnet18"},
}
#: A sweep store written by ptk 0.1.0's own Store (commit 0189f1f) holding one complete cell: the H200 `fast` run with four defenses
OLD_STORE = ROOT / "tests" / "data" / "store-0.1.0.sqlite"


def test_entry_point_and_plugin_names_are_those_of_0_1_0(registry):
    assert set(PYPROJECT["project"]["entry-points"]["ptk"]) >= ENTRY_POINTS_0_1_0
    reg = registry()
    for kind, names in PLUGINS_0_1_0.items():
        assert names <= set(reg.names(kind)), kind


def test_the_same_settings_keep_the_cell_ids_0_1_0_gave_them():
    """Computed with ptk 0.1.0 (commit 0189f1f): a changed id would make every stored grid run again."""
    quick = merge(PRESETS["quick"], {"attack": "labelflip", "defenses": ["ensemble"], "seed": 3, "target_rank": 1,
                                     "options": {"labelflip": {"budget": 20}}})
    assert cell_id(ExperimentConfig.from_dict(quick)) == "9acbc8a69dcf3f53"
    assert cell_id(ExperimentConfig()) == "806d5d9b1deb57ca"


def test_a_store_written_by_0_1_0_reads_and_reports(ptk, tmp_path):
    db = tmp_path / "store.sqlite"
    shutil.copy(OLD_STORE, db)  # ptk never changes a file it did not create: work on a copy
    assert "0 pending, 0 running, 1 complete, 0 failed" in ptk("sweep", "status", db).output
    out = tmp_path / "report"
    ptk("sweep", "report", db, "--out", out)
    report = (out / "report.md").read_text()
    for model in ("clean", "poisoned", "influence", "activation-clustering"):
        assert model in report
