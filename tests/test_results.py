"""results.json's dataclasses: one serialisation, today's keys in today's order, optional keys left out."""

from __future__ import annotations

import json

import torch

from ptk.evaluate import removal_scores, weight_means
from ptk.results import ModelRow, RunResults, Suspicion, Vote


def run(**kw) -> RunResults:
    return RunResults(status="running", config={"seed": 0}, resolved={}, versions={}, data={}, plugins={},
                      started="t0", **kw)


def test_a_run_has_only_the_keys_it_got_to():
    assert list(run().to_dict()) == ["status", "config", "resolved", "versions", "data", "plugins", "started",
                                     "models"]
    r = run(target={"index": 3}, error="RuntimeError: x")
    r.status = "failed"
    assert list(r.to_dict()) == ["status", "config", "resolved", "versions", "data", "plugins", "started",
                                 "models", "target", "error"]
    r = run(target={"index": 3}, attack={"name": "labelflip"}, cache={"hits": 0, "misses": 2}, finished="t1")
    assert list(r.to_dict())[-5:] == ["models", "target", "attack", "cache", "finished"]


def test_rows_flatten_their_groups_and_keep_a_group_s_nulls():
    row = ModelRow("d", test_accuracy=0.5, per_class_accuracy={"a": None}, target_probs={"a": 1.0}, target_pred="a",
                   attack_success=False, train_seconds=0.0, defense_seconds=1.0, threat_model="t",
                   removal=removal_scores(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)),
                   suspicion=Suspicion(None), weights=weight_means(torch.ones(4), torch.tensor([], dtype=torch.long)))
    d = row.to_dict()
    assert list(d) == ["name", "test_accuracy", "per_class_accuracy", "target_probs", "target_pred", "attack_success",
                       "train_seconds", "defense_seconds", "threat_model", "removed_indices", "removed_count",
                       "removal_precision", "removal_recall", "suspicion_auroc", "mean_weight_poison",
                       "mean_weight_clean"]
    assert d["removal_precision"] is None and d["suspicion_auroc"] is None and d["mean_weight_poison"] is None
    assert d["per_class_accuracy"] == {"a": None}  # values inside a field are never touched
    json.dumps(run(models=[row]).to_dict())


def test_clean_failed_and_ensemble_rows():
    clean = ModelRow("clean", test_accuracy=0.9, train_seconds=0.0, cached=False).to_dict()
    assert clean == {"name": "clean", "test_accuracy": 0.9, "train_seconds": 0.0, "cached": False}
    assert ModelRow.failure("x", ValueError("bad")).to_dict() == {"name": "x", "failed": True,
                                                                  "error": "ValueError: bad"}
    seeds = ModelRow("e", target_pred="a", vote=Vote({"a": 2, "b": 1}, "a", "b")).to_dict()
    assert list(seeds) == ["name", "target_pred", "target_votes", "target_vote_pred", "softmax_target_pred"]
    partition = ModelRow("e", vote=Vote({"a": 2}, "a", "a", 0, False)).to_dict()
    assert partition["target_certified_tolerance"] == 0 and partition["budget_exceeds_certificate"] is False
    assert run(models=[ModelRow("a"), ModelRow.failure("b", OSError())]).failures == ["b"]
