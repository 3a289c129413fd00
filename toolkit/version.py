"""ptk's one version string (the package metadata reads it: pyproject.toml's dynamic version) and its name on
the package index."""

__version__ = "0.1.0"
#: The name on the package index (``pip install ptk-poison``): ``ptk`` there is an unrelated parser.
#: The import name and the command stay ``ptk`` (docs/architecture.md says why).
DISTRIBUTION = "ptk-poison"
