"""A sweep's results aggregated: success rates with honest intervals and what a defense costs, per setting.

A sweep's rows are grouped by *setting* (the grid values other than seed and
target, which are repetitions) and model (clean, poisoned, each defense). Per
group: the attack's success rate with a 95% Wilson interval, mean test accuracy
and its drop from the clean model of the same cell (mean, 95% t interval),
mean removal precision / recall / AUROC, and mean seconds spent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from .results import model_seconds
from .stats import mean, t_interval, wilson_interval

#: Grid values that are repetitions of one setting, not settings: rates are taken over them.
REPEATS = {"seed", "target_rank", "target_index"}


def settings_label(values: dict[str, Any]) -> str:
    """Grid values as messages and tables name them: ``seed=1, target_rank=2``."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


@dataclass
class Rate:
    """One model (clean, poisoned, a defense) of one setting, over its seeds and targets."""

    setting: dict[str, Any]
    model: str
    n: int
    successes: int
    failed: int
    budget: float | None
    test_accuracy: float | None
    accuracy_drop: float | None
    accuracy_drop_ci: tuple[float, float] | None
    removal_precision: float | None
    removal_recall: float | None
    suspicion_auroc: float | None
    seconds: float | None
    backdoor_asr: float | None = None
    rejected_clean: float | None = None
    rejected_triggered: float | None = None

    @property
    def rate(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {**asdict(self), "rate": self.rate, "rate_ci_low": lo, "rate_ci_high": hi}


def success_rates(rows: Iterable[dict[str, Any]]) -> list[Rate]:
    """Rates per (setting, model) over seeds and targets; failed models are counted apart, and the accuracy
    drop is taken against the clean model of the same cell."""
    rows = list(rows)
    clean_acc = {r["cell_id"]: r["test_accuracy"] for r in rows if r["name"] == "clean" and not r["failed"]}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for row in rows:
        setting = {k: v for k, v in json.loads(row["grid_values"]).items() if k not in REPEATS}
        key = json.dumps(setting, sort_keys=True)
        settings[key] = setting
        groups.setdefault((key, row["name"]), []).append(row)
    out = []
    for (key, model), members in groups.items():
        ok = [m for m in members if not m["failed"]]

        def values(col: str) -> list[float]:
            return [m[col] for m in ok if m.get(col) is not None]

        drops = [clean_acc[m["cell_id"]] - m["test_accuracy"] for m in ok
                 if m["test_accuracy"] is not None and clean_acc.get(m["cell_id"]) is not None]
        seconds = [s for s in map(model_seconds, ok) if s is not None]
        out.append(Rate(settings[key], model, len(ok), sum(int(m["attack_success"] or 0) for m in ok),
                        len(members) - len(ok), mean(values("budget")), mean(values("test_accuracy")),
                        mean(drops), t_interval(drops), mean(values("removal_precision")),
                        mean(values("removal_recall")), mean(values("suspicion_auroc")), mean(seconds),
                        mean(values("backdoor_asr")), mean(values("rejected_clean")),
                        mean(values("rejected_triggered"))))
    order = {"clean": 0, "poisoned": 1}
    return sorted(out, key=lambda r: (json.dumps(r.setting, sort_keys=True), order.get(r.model, 2), r.model))
