"""The benchmark suites shipped with ptk, as TOML data files (``ptk bench list``; see :mod:`ptk.suite`)."""
