"""Storage: SQLModel tables, the engines, migrations."""

from __future__ import annotations

from .engine import Store, async_url

__all__ = ["Store", "async_url"]
