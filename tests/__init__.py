"""The test suite is a package (every folder under tests/ has an __init__.py): test modules are
imported as ``tests.<folder>.<module>``, so two folders may hold files of the same name, and the
kits are imported as ``tests.helpers.<module>``. See tests/README.md."""
