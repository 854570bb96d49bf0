from __future__ import annotations

pytest_plugins = ["prm_core.testing"]
