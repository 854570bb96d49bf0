"""The ``parquet`` destination: a folder of Parquet files any engine reads directly.

One folder per table, partitioned by UTC day the way Hive, Spark, DuckDB and pandas expect
(``events/day=2026-12-05/part-<first>-<last>.parquet``). Each file is written under a
temporary name, flushed to disk and renamed into place, so a reader or a crash never meets a
half-written file; its name comes from the feed positions it holds, so a batch delivered
again overwrites its own files instead of adding rows. The folder's progress is kept in
``_prm_warehouse.json`` (written the same way, after the files it covers).

An erasure rewrites every file holding rows of the erased customers written before it:
``events`` keep what aggregates need and lose their payload (``data`` becomes
``{"erased": true}``, as in the hub), ``customers`` lose every version before the erasure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .loading import DAY, Batch, Mark
from .reading import Columns, as_money
from .schema import BIGINT, FLAG, JSON, MONEY, TABLES, TEXT, TEXTS, TIME

__all__ = ["MARK_FILE", "ParquetWarehouse", "arrow_schema"]

MARK_FILE = "_prm_warehouse.json"
_TYPES: dict[str, pa.DataType] = {
    TEXT: pa.string(),
    JSON: pa.string(),
    BIGINT: pa.int64(),
    TIME: pa.timestamp("us", tz="UTC"),
    MONEY: pa.decimal128(18, 4),
    FLAG: pa.bool_(),
    TEXTS: pa.list_(pa.string()),
}
_PART = re.compile(r"^part-(\d{20})-(\d{20})\.parquet$")
_RANGE = re.compile(r"^(part|compact)-(\d{20})-(\d{20})\.parquet$")
# compaction folds small files into one up to this many rows
COMPACT_ROWS = 1_000_000
ERASED_DATA = json.dumps({"erased": True}, separators=(",", ":"))


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow (and so Parquet) schema of a warehouse table; ``docs/warehouse.md`` lists it."""
    return pa.schema([pa.field(c.name, _TYPES[c.type]) for c in TABLES[table].columns])


def _time_array(values: list[Any]) -> pa.Array:
    sample = next((v for v in values if v is not None), None)
    utc = pa.timestamp("us", tz="UTC")
    if isinstance(sample, str):  # SQLite's text, naive UTC: Arrow parses it in C
        return pa.array(values, pa.string()).cast(pa.timestamp("us")).cast(utc)
    if sample is not None and sample.tzinfo is None:  # PostgreSQL's naive UTC
        return pa.array(values, pa.timestamp("us")).cast(utc)
    return pa.array(values, utc)


def to_arrow(table: str, cols: Columns) -> pa.Table:
    """The rows as an Arrow table of the table's schema, with the partition day beside them."""
    arrays = []
    for column in TABLES[table].columns:
        values = cols[column.name]
        if column.type == TIME:
            arrays.append(_time_array(values))
        elif column.type == MONEY:
            arrays.append(pa.array([as_money(v) for v in values], _TYPES[MONEY]))
        else:
            arrays.append(pa.array(values, _TYPES[column.type]))
    schema = arrow_schema(table)
    result = pa.Table.from_arrays(arrays, schema=schema)
    day_from = TABLES[table].day_from
    day = pc.strftime(result.column(day_from), format="%Y-%m-%d") if day_from else pa.array(cols[DAY], pa.string())
    return result.append_column(DAY, day)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(dest: Path, write: Any) -> None:
    """Write ``dest`` under a temporary name, flush it to disk, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")  # readers' globs (*.parquet) never match it
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


class ParquetWarehouse:
    """The warehouse tables as Parquet files under ``path`` (see the module's docstring)."""

    def __init__(self, path: Path, *, compact_files: int = 50) -> None:
        self.path = path
        # a partition with this many files of changes has them folded into one (0: never)
        self.compact_files = compact_files
        # files of a write whose mark was never kept may be there (a crash, a failed batch):
        # they are removed before the next write, which covers their changes again
        self._checked = False

    async def mark(self) -> Mark:
        return await asyncio.to_thread(self.read_mark)

    async def write(self, batch: Batch) -> None:
        await asyncio.to_thread(self.write_now, batch)

    async def close(self) -> None:
        pass

    def read_mark(self) -> Mark:
        try:
            doc = json.loads((self.path / MARK_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Mark()
        return Mark.from_json(doc)

    def write_now(self, batch: Batch) -> None:
        try:
            if not self.path.exists():
                # the tables hold personal data (identities, traits): the folder is the hub
                # user's alone unless the operator made it otherwise
                self.path.mkdir(mode=0o700, parents=True)
            if not self._checked:
                self._remove_unmarked(self.read_mark().position)
                self._checked = True
            written: set[Path] = set()
            for table, cols in batch.tables.items():
                written |= self._write_table(table, batch.name, to_arrow(table, cols))
            for position, ids in batch.erasures:
                self.erase(ids, position)
            text = json.dumps(batch.mark.to_json(), indent=1)
            _replace(self.path / MARK_FILE, lambda f: f.write(text.encode()))
            # only files the mark covers are folded: a crash never leaves a compacted file
            # holding changes the next delivery writes again
            for folder in sorted(written):
                self._compact(folder)
        except BaseException:
            self._checked = False
            raise

    def _write_table(self, table: str, name: str, rows: pa.Table) -> set[Path]:
        days = rows.column(DAY)
        folders = set()
        for day in pc.unique(days).to_pylist():
            part = rows.filter(pc.equal(days, day)).drop_columns([DAY])
            dest = self.path / table / f"day={day}" / f"{name}.parquet"
            _replace(dest, lambda f, part=part: pq.write_table(part, f))
            folders.add(dest.parent)
        return folders

    def _compact(self, folder: Path) -> None:
        """Fold a partition's files of changes into one once there are ``compact_files`` of them
        (with earlier compacted files still under :data:`COMPACT_ROWS` rows): each batch of
        changes adds a small file per partition it touches, which readers pay for. The folded
        file is named for the positions it spans; the files it replaces are removed after it is
        in place (a reader listing the folder in between sees their rows twice, once)."""
        parts = sorted(folder.glob("part-*.parquet"))
        if not self.compact_files or len(parts) < self.compact_files:
            return
        earlier = [c for c in sorted(folder.glob("compact-*.parquet")) if pq.read_metadata(c).num_rows < COMPACT_ROWS]
        sources = [*earlier, *parts]
        ranges = [_RANGE.match(p.name) for p in sources]
        first = min(int(m.group(2)) for m in ranges if m)
        last = max(int(m.group(3)) for m in ranges if m)
        schema = arrow_schema(folder.parent.name)
        merged = pa.concat_tables([pq.read_table(p, schema=schema) for p in sources])
        _replace(folder / f"compact-{first:020d}-{last:020d}.parquet", lambda f: pq.write_table(merged, f))
        self._remove_covered(folder)

    def _remove_covered(self, folder: Path) -> None:
        """Remove files whose positions a compacted file of the same partition spans (left by a
        compaction that stopped before removing them)."""
        spans = [(int(m.group(2)), int(m.group(3)), p) for p in folder.glob("*.parquet") if (m := _RANGE.match(p.name))]
        compacted = [(a, b, p) for a, b, p in spans if p.name.startswith("compact-")]
        removed = False
        for a, b, p in spans:
            if any(p != c and ca <= a and b <= cb for ca, cb, c in compacted):
                p.unlink()
                removed = True
        if removed:
            _fsync_dir(folder)

    def files(self, table: str) -> Iterator[Path]:
        folder = self.path / table
        if folder.is_dir():
            yield from sorted(folder.glob("day=*/*.parquet"))

    def _remove_unmarked(self, position: int) -> None:
        for table in TABLES:
            for file in list(self.files(table)):
                m = _PART.match(file.name)
                if m and int(m.group(1)) > position:
                    file.unlink()
            folder = self.path / table
            if folder.is_dir():
                for partition in sorted(folder.glob("day=*")):
                    self._remove_covered(partition)
                    for tmp in partition.glob(".*.tmp"):  # a write a crash cut short
                        tmp.unlink()

    def erase(self, customer_ids: Sequence[str], before: int) -> int:
        """Rewrite every file holding rows of these customers written before position
        ``before``; returns how many files changed."""
        ids = pa.array(list(customer_ids), pa.string())
        changed = 0
        for table in ("events", "customers", "changes"):
            for file in list(self.files(table)):
                probe = pq.read_table(file, columns=["position", "customer_id"])
                theirs = pc.is_in(probe.column("customer_id"), value_set=ids)
                hit = pc.and_(theirs, pc.less(probe.column("position"), before))
                if not pc.any(hit).as_py():
                    continue
                rows = pq.read_table(file, schema=arrow_schema(table))
                if table == "customers":
                    rows = rows.filter(pc.invert(hit))
                else:
                    blank = ERASED_DATA if table == "events" else "{}"  # as the hub and the feed say
                    data = pc.if_else(hit, pa.scalar(blank), rows.column("data"))
                    rows = rows.set_column(rows.schema.get_field_index("data"), "data", data)
                if rows.num_rows == 0:
                    file.unlink()
                    _fsync_dir(file.parent)
                else:
                    _replace(file, lambda f, rows=rows: pq.write_table(rows, f))
                changed += 1
        return changed
