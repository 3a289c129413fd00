"""Plugin options: declared by each plugin, parsed from ``-o plugin.key=value``.

Options are validated before any training starts, so a typo costs a second,
not an hour of GPU time.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import UsageError


@dataclass(frozen=True)
class Option:
    """One option a plugin accepts.

    ``type`` is ``int``, ``float``, ``str`` or ``bool``; ``choices`` restricts
    the value; ``check`` is an optional callable that returns an error message
    (or None) for a parsed value.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    def parse(self, raw: Any, owner: str) -> Any:
        """Turn a raw string (or TOML value) into a typed value, or raise UsageError."""
        where = f"option {owner}.{self.name}"
        try:
            if self.type is bool:
                if isinstance(raw, bool):
                    value = raw
                elif str(raw).lower() in ("1", "true", "yes", "on"):
                    value = True
                elif str(raw).lower() in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise ValueError(raw)
            elif self.type is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            else:
                value = self.type(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {raw!r} is not a valid {self.type.__name__} ({self.help})") from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise UsageError(f"{where}: {problem}")
        return value


def positive(value: Any) -> str | None:
    """Option check: value must be > 0."""
    return None if value > 0 else f"must be positive, got {value}"


def positive_up_to(bound: float, why: str) -> Callable[[Any], str | None]:
    """Option check for an iteration count: must be > 0; above ``bound`` (a sane ceiling, ``why`` says whose)
    it is accepted with a warning, since the run's cost grows with it and nothing else would say so."""
    def check(value: Any) -> str | None:
        if value <= 0:
            return f"must be positive, got {value}"
        if value > bound:
            logging.getLogger("ptk").warning("ptk: %s is above %s (%s): the attack's cost grows with it; "
                                             "expect a long run", value, bound, why)
        return None

    return check


def non_negative(value: Any) -> str | None:
    """Option check: value must be >= 0."""
    return None if value >= 0 else f"must be >= 0, got {value}"


def resolve_options(owner: str, declared: Sequence[Option], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the user's values; unknown keys are a UsageError naming the closest."""
    by_name = {o.name: o for o in declared}
    values = {o.name: o.default for o in declared}
    for key, raw in given.items():
        if key not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            close = difflib.get_close_matches(key, list(by_name), n=1)
            hint = f" Did you mean {owner}.{close[0]}?" if close else ""
            raise UsageError(f"unknown option {owner}.{key} (options of {owner}: {known}).{hint}")
        values[key] = by_name[key].parse(raw, owner)
    return values


def parse_assignments(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["labelflip.budget=250"]`` -> ``{"labelflip": {"budget": "250"}}``."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        head, sep, value = pair.partition("=")
        plugin, dot, key = head.partition(".")
        if not sep or not dot or not plugin or not key:
            raise UsageError(f"bad -o {pair!r}: write -o PLUGIN.OPTION=VALUE, e.g. -o labelflip.budget=250")
        out.setdefault(plugin.strip(), {})[key.strip()] = value.strip()
    return out


def fraction(value: Any) -> str | None:
    """Option check: value must lie in (0, 1)."""
    return None if 0 < value < 1 else f"must be in (0, 1), got {value}"


def share(value: Any) -> str | None:
    """Option check: value must lie in (0, 1] (a share of a whole that may be all of it)."""
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def check_removal_count(option: str, k: int, n: int) -> None:
    """A removal defense's ``k`` must leave something to retrain on (``k`` 0 means "use the fraction": no check)."""
    if k and k >= n:
        raise UsageError(f"option {option}={k} would remove all {n} training samples; pick k < {n}")


def removal_count(k: int, frac: float, n: int) -> int:
    """How many of ``n`` training samples a removal defense drops: ``k`` if set, else ``frac`` of ``n`` (at least 1).

    A fixed fraction needs no knowledge of the attack; the true poison count would
    be an oracle (see :class:`ptk.ThreatModel`'s ``knows_budget``).
    """
    return k if k else max(1, min(n - 1, round(frac * n)))
