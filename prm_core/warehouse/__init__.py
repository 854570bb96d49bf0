"""The warehouse: the hub's facts as tables analysts query (Parquet files, a PostgreSQL schema).

See ``docs/warehouse.md``. :mod:`.schema` defines the tables, :mod:`.reading` reads their rows
from the hub's database, :mod:`.loading` writes the history and then the feed's changes,
:mod:`.parquet` and :mod:`.postgres` are the two destinations, :mod:`.kinds` registers them and
:mod:`.export` is ``prm export``.
"""
