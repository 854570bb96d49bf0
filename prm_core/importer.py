"""``prm import``: bulk-load past contacts from JSON Lines, idempotently and resumably.

The file is read in batches; each batch is recorded through the same group commit as
live traffic, then the byte offset after it is saved. A rerun (after an interruption, or
of the same file) starts from the saved offset; anything recorded twice is a duplicate
and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import sqlalchemy as sa
from attrs import define
from sqlalchemy.engine import Connection
from tqdm import tqdm

from .config import Config
from .errors import InvalidInput
from .events import parse_event
from .hub import Hub
from .model import Event
from .store.tables import import_checkpoints, utcnow

__all__ = ["ImportResult", "import_events"]


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
) -> ImportResult:
    """Import ``path`` into ``touchpoint``; see the module docstring."""
    result = ImportResult()
    source = _source_key(path, touchpoint)
    size = path.stat().st_size  # noqa: ASYNC240  # a command-line run: nothing else shares the loop
    async with Hub.open(config) as hub:
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

        batch: list[Event] = []

        async def flush(at: int, lines: int) -> None:
            if batch:
                recorded = await hub.record(batch)
                dup = sum(1 for r in recorded if r.duplicate)
                result.duplicates += dup
                result.accepted += len(recorded) - dup
                batch.clear()
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
                    obj = json.loads(raw)
                    batch.append(
                        parse_event(
                            obj, touchpoint, namespaces, config.default_region,
                            received_at=utcnow(), where=f"line {line_no}: ",
                        )
                    )  # fmt: skip
                except (json.JSONDecodeError, UnicodeDecodeError, InvalidInput) as exc:
                    result.invalid += 1
                    message = exc.message if isinstance(exc, InvalidInput) else f"line {line_no}: not valid JSON"
                    tqdm.write(f"invalid: {message}")
                    if not skip_invalid:
                        await flush(position - len(raw), line_no - 1)
                        return result
                    continue
                if len(batch) >= batch_size:
                    await flush(position, line_no)
            await flush(position, line_no)
    return result
