"""A recorder of hook calls, registered as a plugin that implements every hook."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from attrs import frozen

from .. import hookspecs
from ..hookspecs import hookimpl

__all__ = ["HookCall", "HookRecorder"]


@frozen
class HookCall:
    """One call of a hook: its name and its arguments by name."""

    name: str
    kwargs: dict[str, Any]

    def __getattr__(self, arg: str) -> Any:
        try:
            return self.kwargs[arg]
        except KeyError:
            raise AttributeError(arg) from None


def _implementation(spec: Callable[..., Any], record: Callable[[str, dict[str, Any]], None]) -> Any:
    """A ``tryfirst`` implementation of hook ``spec`` that records its arguments by name.

    pluggy passes an implementation the arguments its signature names, read through
    ``__wrapped__``: wrapping the spec gives this one the spec's parameters."""
    name = spec.__name__
    argnames = tuple(inspect.signature(spec).parameters)

    def implementation(*args: Any) -> None:
        record(name, dict(zip(argnames, args, strict=True)))

    functools.update_wrapper(implementation, spec, assigned=("__name__", "__qualname__", "__doc__"), updated=())
    return hookimpl(tryfirst=True)(implementation)


class HookRecorder:
    """Records every hook call made after it was registered (registration hooks run
    before, at start, so they are not recorded).

    .. code-block:: python

        def test_created(hook_recorder, hub):
            ...
            (call,) = hook_recorder.getcalls("prm_customer_created")
            assert call.customer.kind == "person"
    """

    def __init__(self) -> None:
        self.calls: list[HookCall] = []
        for name, spec in inspect.getmembers(hookspecs, inspect.isfunction):
            if name.startswith("prm_") and not hasattr(type(self), name):
                setattr(self, name, _implementation(spec, self._record))

    # written out: the spec's own parameters include one kept only for older plugins
    # (hookspecs.DEPRECATED_PARAMETERS), which would draw a DeprecationWarning
    @hookimpl(tryfirst=True)
    def prm_hub_stopping(self, hub: Any) -> None:
        self._record("prm_hub_stopping", {"hub": hub})

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append(HookCall(name, kwargs))

    def getcalls(self, name: str) -> list[HookCall]:
        """Calls of the hook ``name``, oldest first."""
        return [c for c in self.calls if c.name == name]

    def clear(self) -> None:
        self.calls.clear()
