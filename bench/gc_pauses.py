"""The garbage collector inside a test run: a pytest plugin that prints its figures (never asserts).

Every ``--gc-every`` tests (default 100) and at the end it prints the objects the collector
tracks, the time spent in collections so far, and the longest single collection since the
last line (timed with ``gc.callbacks``, so finalizers run by a collection are included)::

    PYTHONPATH=bench pytest -p gc_pauses -s tests/test_segment.py tests/test_shopify.py

A test run that starts a hub per test shows here whether its heap stays flat (see
``prm_core.testing``'s ``_forget_stopped_apps``) and how long a pause can land inside a test.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest

_state = {"started": 0.0, "total": 0.0, "count": 0, "longest": 0.0, "tests": 0}


def _timer(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _state["started"] = time.perf_counter()
        return
    took = time.perf_counter() - _state["started"]
    _state["total"] += took
    _state["count"] += 1
    _state["longest"] = max(_state["longest"], took)


def _line(terminal: Any) -> None:
    terminal.write_line(
        f"[gc] tests {_state['tests']:,}  objects {len(gc.get_objects()):,}  "
        f"collections {_state['count']:,} taking {_state['total']:.1f} s  "
        f"longest since the last line {_state['longest'] * 1000:.0f} ms"
    )
    _state["longest"] = 0.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gc-every", type=int, default=100, help="print the collector's figures every N tests")


def pytest_configure(config: pytest.Config) -> None:
    gc.callbacks.append(_timer)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _timer in gc.callbacks:
        gc.callbacks.remove(_timer)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    _state["tests"] += 1
    if _state["tests"] % item.config.getoption("--gc-every") == 0:
        terminal = item.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line("")
            _line(terminal)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _line(terminalreporter)
