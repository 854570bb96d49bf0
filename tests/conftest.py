from __future__ import annotations

import logging

import pytest
import structlog

pytest_plugins = ["prm_core.testing"]


@pytest.fixture(autouse=True)
def _restore_logging():
    """Commands under test configure logging globally; give every test the defaults back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


pytest_plugins = [*pytest_plugins, "pytester"]
