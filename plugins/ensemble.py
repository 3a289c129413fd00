"""Defense plugin ``ensemble``: K models, aggregated by averaged softmax and by plurality vote.

``partition`` (default) follows Deep Partition Aggregation (Levine & Feizi 2021):
each training image goes to exactly one member, chosen by a hash of its pixels,
so one poisoned sample can sway at most one vote. A test prediction whose top
vote count leads the runner-up by ``gap`` is then certified against
``floor(gap / 2)`` poisoned samples (one less when the tie-break favours the
runner-up). ``bagging`` draws bootstrap samples; ``seeds`` trains K models on
all the data with different seeds: neither is certified.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ptk import (
    Defense,
    DefenseContext,
    DefenseResult,
    EnsemblePredictor,
    Option,
    ThreatModel,
    hookimpl,
    positive,
    vote_prediction_and_tolerance,
)


def partition_of(x: torch.Tensor, k: int) -> torch.Tensor:
    """Member index of each uint8 image: sha256 of its pixels mod ``k`` (stable across runs and machines)."""
    flat = x.cpu().contiguous().view(len(x), -1).numpy()
    return torch.tensor([int.from_bytes(hashlib.sha256(row.tobytes()).digest()[:8], "little") % k for row in flat])


class Ensemble(Defense):
    name = "ensemble"
    description = "K models on hash partitions (certified, DPA), bootstrap bags or seeds; softmax and vote"
    threat = ThreatModel(knows_target=False, trusted_data=False, uses_poisoned_model=False)
    options = [
        Option("k", int, 5, "number of members", check=positive),
        Option("mode", str, "partition", "how members get their data", choices=("partition", "bagging", "seeds")),
    ]

    def defend(self, ctx: DefenseContext, options: dict[str, Any]) -> DefenseResult:
        k, mode = options["k"], options["mode"]
        n = len(ctx.data.y_train)
        members = []
        if mode == "partition":
            part = partition_of(ctx.data.x_train, k).to(ctx.device)
        gen = torch.Generator().manual_seed(ctx.seed)
        abstaining = []
        for i in range(k):
            keep = None
            if mode == "partition":
                keep = (part == i).nonzero().squeeze(1)
                if len(keep) < 2:  # too little data to train: the member abstains from every vote
                    abstaining.append(i)
                    continue
            elif mode == "bagging":
                keep = torch.randint(0, n, (n,), generator=gen).sort().values.to(ctx.device)
            members.append(ctx.train(keep=keep, seed=ctx.seed + 1 + i, desc=f"ensemble member {i + 1}/{k}"))
        if not members:
            raise ValueError(f"all {k} partitions hold fewer than 2 samples; lower -o ensemble.k")
        ens = EnsemblePredictor(members, ctx.predict_proba, certified=mode == "partition")

        test_votes = ens.votes(ctx.data.x_test)
        vote_pred, tol = vote_prediction_and_tolerance(test_votes)
        details: dict[str, Any] = {
            "mode": mode,
            "k": k,
            "vote_test_accuracy": round((vote_pred == ctx.data.y_test).float().mean().item(), 6),
        }
        if mode == "partition":
            details["member_sizes"] = torch.bincount(part.cpu(), minlength=k).tolist()
            details["abstaining_members"] = abstaining
            details["certified_tolerance_histogram"] = torch.bincount(tol.cpu(), minlength=k // 2 + 1).tolist()
            details["mean_certified_tolerance"] = round(tol.float().mean().item(), 6)
        return DefenseResult(predictor=ens, details=details)


@hookimpl
def register_defenses(register):
    register(Ensemble())
