"""ptk's test suite, a package: helpers in ``tests.fixtures``, shared in-process test plugins in
``tests.plugins``, fixtures in ``conftest.py``."""
