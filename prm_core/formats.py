"""File formats ``prm import`` can read besides JSON Lines, registered by plugins.

See :func:`prm_core.hookspecs.prm_importers` and :mod:`prm_core.importer`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

from .errors import InvalidInput
from .model import Event, _check_name

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["ImportContext", "Importer"]


def _suffixes(value: Any) -> tuple[str, ...]:
    return tuple(str(s).lower() for s in value)


@frozen
class Importer:
    """A file format ``prm import --touchpoint <touchpoint>`` can read, by file name suffix.

    ``read(path, context)`` is an async iterator streaming the file: it yields one
    :class:`~prm_core.model.Event` per record, or an :class:`~prm_core.errors.InvalidInput`
    for a record that cannot be imported (its message names the record), and goes on.
    Events are recorded in batches behind it; a reader whose next record depends on what
    came before (a void of an earlier sale) awaits ``context.flush()`` first.
    """

    name: str = field(validator=_check_name)
    touchpoint: str = field(validator=_check_name)
    suffixes: tuple[str, ...] = field(converter=_suffixes)
    read: Callable[[Path, ImportContext], AsyncIterator[Event | InvalidInput]]
    description: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.suffixes or not all(s.startswith(".") for s in self.suffixes):
            raise ValueError(f"Importer {self.name!r}: suffixes must be like '.xml', got {self.suffixes!r}")


@define
class ImportContext:
    """What an :class:`Importer`'s reader gets besides the file: the running hub, and
    ``flush()`` to make every event yielded so far recorded (durable, and found by
    :meth:`~prm_core.hub.Hub.recorded` and every read)."""

    hub: Hub
    flush: Callable[[], Awaitable[None]]
