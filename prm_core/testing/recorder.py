"""A recorder of hook calls, registered as a plugin that implements every hook."""

from __future__ import annotations

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


def _spec_names() -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if name.startswith("prm_") and callable(fn)
    }


def _implementation(name: str, args: list[str], record: Callable[[str, dict[str, Any]], None]) -> Any:
    # pluggy matches implementations to specs by their parameter names (from the code
    # object), so each recording function is written out with the spec's own names
    source = f"def {name}({', '.join(args)}):\n    record({name!r}, {{{', '.join(f'{a!r}: {a}' for a in args)}}})\n"
    namespace: dict[str, Any] = {"record": record}
    exec(source, namespace)  # generated from hookspec names only
    return hookimpl(tryfirst=True)(namespace[name])


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
        for name, args in _spec_names().items():
            setattr(self, name, _implementation(name, args, self._record))

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append(HookCall(name, kwargs))

    def getcalls(self, name: str) -> list[HookCall]:
        """Calls of the hook ``name``, oldest first."""
        return [c for c in self.calls if c.name == name]

    def clear(self) -> None:
        self.calls.clear()
