"""``prm import``: bulk-load past contacts, idempotently and resumably.

The default format is JSON Lines of Events. A touch point can register other formats (the
POS registers ARTS POSLog XML) with the ``prm_importers`` hook: an :class:`Importer`
claims file name suffixes for a touch point and turns a file into events, streaming.

The file is read in batches; each batch is recorded through the same group commit as
live traffic, then the position after it is saved (a byte offset for JSON Lines, a count
of records for a registered format). A rerun (after an interruption, or of the same file)
starts from the saved position; anything recorded twice is a duplicate and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from attrs import define
from sqlalchemy.engine import Connection
from tqdm import tqdm

from .config import Config
from .errors import ConfigError, InvalidInput, Overloaded
from .events import parse_event
from .formats import ImportContext, Importer
from .hub import Hub
from .model import Event
from .server.errors import ApiError
from .server.jsonbody import loads
from .store.tables import import_checkpoints, utcnow

__all__ = ["ImportContext", "ImportResult", "Importer", "find_importer", "import_events"]


def find_importer(hub: Hub, path: Path, touchpoint: str) -> Importer | None:
    """The registered importer for this touch point and file suffix, if any (else JSON Lines)."""
    found: dict[tuple[str, str], Importer] = {}
    for importer in hub.registrations.importers:
        for suffix in importer.suffixes:
            other = found.get((importer.touchpoint, suffix))
            if other is not None:
                raise ConfigError(
                    f"importers {other.name!r} and {importer.name!r} both read {suffix} files for "
                    f"touch point {importer.touchpoint!r}"
                )
            found[(importer.touchpoint, suffix)] = importer
    return found.get((touchpoint, path.suffix.lower()))


@define
class ImportResult:
    accepted: int = 0
    duplicates: int = 0
    invalid: int = 0
    skipped_lines: int = 0


def _source_key(path: Path, touchpoint: str) -> str:
    return hashlib.sha256(f"{touchpoint}\x1f{path.resolve()}".encode()).hexdigest()


async def import_events(
    config: Config,
    path: Path,
    touchpoint: str,
    *,
    batch_size: int = 500,
    skip_invalid: bool = False,
    restart: bool = False,
    progress: bool = True,
    plugins: Sequence[Any] = (),
) -> ImportResult:
    """Import ``path`` into ``touchpoint``; see the module docstring. ``plugins`` are
    registered besides the installed ones (as for :meth:`Hub.open`)."""
    result = ImportResult()
    source = _source_key(path, touchpoint)
    size = path.stat().st_size  # noqa: ASYNC240  # a command-line run: nothing else shares the loop
    async with Hub.open(config, plugins=plugins, autoload=True) as hub:
        hub.touchpoint(touchpoint)
        namespaces = hub.registrations.namespaces.items

        def read_checkpoint(conn: Connection) -> tuple[int, int]:
            row = conn.execute(sa.select(import_checkpoints).where(import_checkpoints.c.source == source)).first()
            return (row.byte_offset, row.lines) if row else (0, 0)

        offset, line_no = (0, 0) if restart else await hub.store.read(read_checkpoint)
        if offset > size:  # the file was replaced by a shorter one
            offset, line_no = 0, 0
        result.skipped_lines = line_no

        async def save(new_offset: int, lines: int) -> None:
            def write(conn: Connection) -> None:
                c = import_checkpoints.c
                done = conn.execute(
                    import_checkpoints.update()
                    .where(c.source == source)
                    .values(byte_offset=new_offset, lines=lines, updated_at=utcnow())
                )
                if done.rowcount == 0:
                    conn.execute(
                        import_checkpoints.insert().values(
                            source=source, byte_offset=new_offset, lines=lines, updated_at=utcnow()
                        )
                    )

            await hub.store.write(write)

        importer = find_importer(hub, path, touchpoint)
        if importer is not None:
            result.skipped_lines = line_no
            await _import_records(hub, importer, path, line_no, result, save, batch_size, skip_invalid, progress)
            await _processed(hub)
            return result

        batch: list[Event] = []

        async def flush(at: int, lines: int) -> None:
            if batch:
                await _take(hub, batch, result)
            await save(at, lines)

        with (
            path.open("rb") as fh,
            tqdm(total=size, initial=offset, unit="B", unit_scale=True, desc=path.name, disable=not progress) as bar,
        ):
            fh.seek(offset)
            position = offset
            for raw in fh:
                position += len(raw)
                line_no += 1
                bar.update(len(raw))
                if not raw.strip():
                    continue
                try:
                    # the HTTP API's own loader: what it refuses (NaN, a number past a double,
                    # a lone surrogate, NUL, too deep) is refused here, naming the line and field
                    try:
                        obj = loads(raw)
                    except ApiError:
                        raise InvalidInput(f"line {line_no}: not valid JSON", None) from None
                    except InvalidInput as exc:
                        raise InvalidInput(f"line {line_no}: {exc.message}", exc.field, exc.code) from None
                    batch.append(
                        parse_event(
                            obj, touchpoint, namespaces, config.default_region,
                            received_at=utcnow(), where=f"line {line_no}: ",
                        )
                    )  # fmt: skip
                except InvalidInput as exc:
                    result.invalid += 1
                    tqdm.write(f"invalid: {exc.message}")
                    if not skip_invalid:
                        await flush(position - len(raw), line_no - 1)
                        await _processed(hub)
                        return result
                    continue
                if len(batch) >= batch_size:
                    await flush(position, line_no)
            await flush(position, line_no)
        await _processed(hub)
    return result


async def _take(hub: Hub, batch: list[Event], result: ImportResult) -> None:
    """Record a batch (journal it, with ``[ingest] journal = true``: past the journal's bound,
    wait for the processor rather than fail) and count it."""
    while True:
        try:
            accepted = await hub.accept(batch)
            break
        except Overloaded:
            await asyncio.sleep(0.2)
    result.duplicates += accepted.duplicates
    result.accepted += accepted.accepted
    batch.clear()


async def _processed(hub: Hub) -> None:
    """With the journal on: wait until what the import journaled is processed, so what it
    reports is recorded when it exits."""
    if hub.journal is not None:
        head = hub.journal.head
        while not await hub.processed_after(head, 1.0):
            pass


async def _import_records(
    hub: Hub,
    importer: Importer,
    path: Path,
    done: int,
    result: ImportResult,
    save: Callable[[int, int], Awaitable[None]],
    batch_size: int,
    skip_invalid: bool,
    progress: bool,
) -> None:
    """Import with a registered format: records are counted, and the first ``done`` (saved by
    an earlier run) are read again but not recorded again."""
    batch: list[Event] = []
    seen = 0  # records read, the invalid ones included

    async def flush() -> None:
        if batch:
            await _take(hub, batch, result)
        await save(0, max(seen, done))

    async def recorded() -> None:
        """The reader's ``flush()``: what it yielded is recorded, so it finds it (a void its
        sale), not only journaled."""
        await flush()
        await _processed(hub)

    with tqdm(unit=" records", desc=path.name, disable=not progress) as bar:
        async for item in importer.read(path, ImportContext(hub, recorded)):
            seen += 1
            bar.update(1)
            if seen <= done:
                continue
            if isinstance(item, InvalidInput):
                result.invalid += 1
                tqdm.write(f"invalid: {item.message}")
                if not skip_invalid:
                    seen -= 1  # resume at the invalid record once the file is fixed
                    await flush()
                    return
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                await flush()
        await flush()
