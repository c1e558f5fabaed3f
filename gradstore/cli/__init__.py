"""The ``gradstore`` command line (``main`` is the console script)."""

from gradstore.cli.commands import app, main, spread_multi_value_flags

__all__ = ["app", "main", "spread_multi_value_flags"]
