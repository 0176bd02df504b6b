"""The ``delib`` command."""

from delib.cli.app import app, main

__all__ = ["app", "main"]
