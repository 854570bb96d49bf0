"""What a destination kind is: its registration, its settings, and the sink it opens.

A plugin registers kinds through ``prm_destination_kinds``; an operator configures
destinations of those kinds as ``[destinations.NAME]`` tables with ``kind`` and an optional
``types`` list. The hub opens one :class:`Sink` per destination as it starts, and its
relay (:mod:`prm_core.feed.relay`) hands each sink the feed's changes in order, a batch at
a time, on its own cursor.

.. code-block:: python

    class Printer:
        def __init__(self, settings):
            self.prefix = settings.text("prefix", default="change")

        async def deliver(self, changes):
            for change in changes:
                print(self.prefix, change.position, change.type)

        async def close(self):
            pass

    @hookimpl
    def prm_destination_kinds(config):
        yield DestinationKind(name="printer", open=Printer)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from attrs import field, frozen
from sqlalchemy.engine import Connection

from ..config import Config
from ..errors import ConfigError
from .changes import Change

__all__ = ["DestinationKind", "DestinationSettings", "Refused", "Sink"]

_MISSING: Any = object()


@runtime_checkable
class Sink(Protocol):
    """One destination's delivery end, opened at hub start.

    ``deliver`` is handed changes in feed order, at most ``batch_size`` at a time, never two
    calls at once. Returning means every change was delivered (the cursor moves past them).
    Raising :class:`Refused` means the changes it names are refused for good (they go to the
    destination's dead-letter list) and the rest of the batch was delivered. Raising anything
    else is a transient failure: the whole batch is delivered again later, after a backoff,
    so a sink must be harmless to repeat (deliver with ids derived from the position).

    ``close`` is awaited once as the hub stops (after the last ``deliver`` has returned or
    been cancelled).
    """

    async def deliver(self, changes: Sequence[Change]) -> None: ...

    async def close(self) -> None: ...


class Refused(Exception):
    """Raised by :meth:`Sink.deliver`: the destination refuses these changes for good.

    ``positions`` are the refused changes' positions (a subset of the batch); every other
    change of the batch counts as delivered. ``reason`` is kept with the dead letters and
    shown by ``prm destinations``: no personal data in it.
    """

    def __init__(self, positions: Sequence[str], reason: str) -> None:
        super().__init__(reason)
        self.positions = tuple(positions)
        self.reason = reason


@frozen
class DestinationSettings:
    """A ``[destinations.NAME]`` table as the sink reads it.

    Every getter raises :class:`~prm_core.errors.ConfigError` with a one-line message naming
    the key (``[destinations.NAME].key ...``) when the value is missing or wrong; raised from
    the kind's ``open``, it stops the hub as it starts. :meth:`invalid` builds such an error
    for checks of the sink's own.
    """

    name: str
    kind: str
    raw: Mapping[str, Any]
    config: Config
    types: frozenset[str] | None = None  # None: every type
    batch_size: int = 1000
    # the hub's own read transactions (``await settings.read(lambda conn: ...)``), for a sink that
    # completes changes with current rows; None while settings are only being checked
    read: Callable[[Callable[[Connection], Any]], Awaitable[Any]] | None = None

    def where(self, key: str) -> str:
        return f"[destinations.{self.name}].{key}"

    def invalid(self, key: str, problem: str) -> ConfigError:
        """An error for ``key``: ``[destinations.NAME].key problem``."""
        return ConfigError(f"{self.where(key)} {problem}")

    def text(self, key: str, *, default: Any = _MISSING) -> str:
        """A non-empty string (``default`` when absent; absent without a default is an error)."""
        value = self.raw.get(key, default)
        if value is _MISSING:
            raise self.invalid(key, "is required")
        if value is default and default is not _MISSING and not isinstance(value, str):
            return value  # type: ignore[no-any-return]  # a default of None stays None
        if not isinstance(value, str) or not value.strip():
            raise self.invalid(key, f"must be a non-empty string, not {_show(value)}")
        return value

    def texts(self, key: str, *, default: Sequence[str] | None = None) -> list[str]:
        """A list of non-empty strings (one string is a list of one)."""
        value = self.raw.get(key, default)
        if value is None:
            raise self.invalid(key, "is required")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.invalid(key, "must be a non-empty list of strings")
        return list(value)

    def number(self, key: str, *, default: float, minimum: float = 0, maximum: float | None = None) -> float:
        """A number within ``[minimum, maximum]``."""
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.invalid(key, f"must be a number, not {_show(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum:g}" if maximum is not None else ""
            raise self.invalid(key, f"must be at least {minimum:g}{upper}, not {value!r}")
        return float(value)

    def integer(self, key: str, *, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        """A whole number within ``[minimum, maximum]``."""
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.invalid(key, f"must be a whole number, not {_show(value)}")
        return int(self.number(key, default=default, minimum=minimum, maximum=maximum))

    def flag(self, key: str, *, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self.invalid(key, f"must be true or false, not {_show(value)}")
        return value


def _show(value: Any) -> str:
    # settings hold secrets: name the type, never echo a string
    return type(value).__name__ if isinstance(value, str) else repr(value)[:40]


@frozen
class DestinationKind:
    """A kind of destination a plugin provides (``kind = "NAME"`` in ``[destinations.*]``).

    ``open`` builds the sink from its settings as the hub starts: it checks them (raising
    the settings' :meth:`~DestinationSettings.invalid` errors) and does no I/O; connect on
    the first ``deliver``. ``about``: one line for ``prm plugins`` and the docs.
    """

    name: str
    open: Callable[[DestinationSettings], Sink]
    about: str = field(default="")
