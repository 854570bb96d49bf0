"""The PRM hub core: customers, identities, dialogues and value delivery behind pluggy hooks."""

from __future__ import annotations

from .hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
# the one place the version is written: pyproject.toml reads it (setuptools dynamic version)
__version__ = "0.1.0"
