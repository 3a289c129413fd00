"""Plugin options and config files: typed, validated before training, clear errors."""

from __future__ import annotations

import pytest

from ptk.cli import build_config
from ptk.errors import UsageError
from ptk.options import Option, parse_assignments, positive, resolve_options

OPTS = [Option("k", int, 5, "members", check=positive), Option("mode", str, "a", "mode", choices=("a", "b")),
        Option("flag", bool, False, "a flag")]


def test_defaults_and_typed_values():
    assert resolve_options("p", OPTS, {}) == {"k": 5, "mode": "a", "flag": False}
    assert resolve_options("p", OPTS, {"k": "7", "flag": "true"}) == {"k": 7, "mode": "a", "flag": True}


@pytest.mark.parametrize("given, message", [
    ({"kk": "1"}, "unknown option p.kk"),
    ({"k": "x"}, "not a valid int"),
    ({"k": "0"}, "must be positive"),
    ({"mode": "c"}, "not one of a, b"),
])
def test_bad_values_are_usage_errors(given, message):
    with pytest.raises(UsageError, match=message):
        resolve_options("p", OPTS, given)


def test_assignments_parse_and_reject_bad_syntax():
    assert parse_assignments(["ensemble.k=3", "labelflip.budget = 10"]) == {
        "ensemble": {"k": "3"}, "labelflip": {"budget": "10"}}
    with pytest.raises(UsageError, match="PLUGIN.OPTION=VALUE"):
        parse_assignments(["budget=3"])


def test_command_line_overrides_config_file_which_overrides_preset(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('preset = "quick"\nepochs = 3\nseed = 4\n[options.labelflip]\nbudget = 12\n')
    cfg = build_config(None, f, {"seed": 9}, (), ("labelflip.pool=all",))
    assert cfg.dataset == "digits"  # from the preset
    assert cfg.epochs == 3 and cfg.seed == 9
    assert cfg.options["labelflip"] == {"budget": 12, "pool": "all"}
    assert cfg.options["resnet18"] == {"width": 16}


def test_config_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        build_config(None, bad, {}, (), ())
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epoch = 3\n")
    with pytest.raises(UsageError, match="unknown key.*epoch"):
        build_config(None, unknown, {}, (), ())
