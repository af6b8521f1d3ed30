"""flctl's version, in a module of its own so that `flctl/__init__.py` and `flctl.cli` both import it."""

__version__ = "0.1.0"
