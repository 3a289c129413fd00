"""What `pip install ptk-poison` from PyPI would give: the sdist and wheel `python -m build` makes.

The wheel is installed into a fresh virtual environment (that sees the packages
of the Python running the tests, so torch and friends need no download; see
``conftest.make_venv``) and its own ``ptk`` console script must list every
built-in plugin from the wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import ptk

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .fixtures import PYPROJECT, ROOT, make_venv, pip_install

pytestmark = pytest.mark.slow  # every test here builds or installs the wheel

BUILTIN_ENTRY_POINTS = PYPROJECT["project"]["entry-points"]["ptk"]
#: Harmless build chatter: byte-compilation is off when PYTHONDONTWRITEBYTECODE is set.
BENIGN = ("byte-compiling is disabled",)


def test_build_has_no_warnings(built):
    _, _, log = built
    warnings = [l for l in log.splitlines() if "warning" in l.lower() and not any(b in l for b in BENIGN)]
    assert not warnings, "python -m build warned:\n" + "\n".join(warnings)


def test_wheel_holds_ptk_and_ptk_plugins_and_the_metadata_pypi_shows(built):
    _, wheel, _ = built
    version = ptk.__version__
    assert wheel.name == f"ptk_poison-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = f"ptk_poison-{version}.dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"ptk", "ptk_plugins", info}  # never a top-level `plugins`
    for folder, package in (("toolkit", "ptk"), ("plugins", "ptk_plugins")):
        sources = {p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*.py")}
        assert {n.split("/", 1)[1] for n in names if n.startswith(f"{package}/")} >= sources  # subpackages too
    assert f"{info}/licenses/LICENSE" in names
    for field in (f"Name: {ptk.DISTRIBUTION}", f"Version: {version}", "Summary: ", "License-Expression: MIT", "Requires-Python: ",
                  "Project-URL: Documentation", "Classifier: ", "Description-Content-Type: text/markdown",
                  "Provides-Extra: test", "Provides-Extra: docs", "Requires-Dist: torch", "# ptk"):
        assert field in metadata, f"wheel METADATA lacks {field!r}"
    assert "[console_scripts]\nptk = ptk.cli:main" in entry_points
    for name, target in BUILTIN_ENTRY_POINTS.items():
        assert f"{name} = {target}" in entry_points


def test_sdist_holds_the_sources_the_wheel_is_built_from(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "LICENSE", "toolkit/__init__.py", "plugins/__init__.py"} <= names


def test_wheel_in_a_fresh_venv_lists_every_builtin_from_the_wheel(built, tmp_path):
    _, wheel, _ = built
    venv = tmp_path / "venv"
    python = make_venv(venv)
    pip_install(python, "--ignore-installed", str(wheel))  # the host's own (editable) ptk is visible there too

    where = subprocess.run(
        [str(python), "-c", "import json, ptk, ptk_plugins, importlib.metadata as md; print(json.dumps("
         "[ptk.__file__, ptk_plugins.__file__, str(md.distribution('ptk-poison').locate_file(''))]))"],
        capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    for path in json.loads(where.stdout):
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{path} is not from the venv's wheel"

    listing = subprocess.run([str(venv / "bin" / "ptk"), "plugins", "--json"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    out = json.loads(listing.stdout)
    assert not [b for b in out["broken"] if b["dist"] == ptk.DISTRIBUTION], out["broken"]
    sources = {p["plugin"] for p in out["plugins"] if p["distribution"] == ptk.DISTRIBUTION and p["version"] == ptk.__version__}
    missing = set(BUILTIN_ENTRY_POINTS) - sources
    assert not missing, f"built-in entry points that registered nothing from the wheel: {sorted(missing)}"


def test_twine_check_strict_passes_on_the_sdist_and_the_wheel(built):
    """What the package index would refuse or render badly (long description, metadata) fails here."""
    sdist, wheel, _ = built
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_name_users_install_is_this_projects_everywhere():
    """`ptk` on the package index is an unrelated parser: README, the metadata and the example plugin package
    all name `ptk-poison`, and the version has one source (ptk.__version__)."""
    assert PYPROJECT["project"]["name"] == ptk.DISTRIBUTION == "ptk-poison"
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ptk.version.__version__"}
    assert f"pip install {ptk.DISTRIBUTION}" in (ROOT / "README.md").read_text()
    example = tomllib.loads((ROOT / "examples" / "ptk-example-plugins" / "pyproject.toml").read_text())
    deps = example["project"]["dependencies"]
    assert any(d.startswith(f"{ptk.DISTRIBUTION}>=") for d in deps), deps
    assert not any(d.replace(" ", "").startswith(("ptk>", "ptk<", "ptk=")) for d in deps), deps
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
