"""The hub's configuration: a TOML file, environment overrides, ``env:VAR`` secrets.

Precedence, highest first: command-line options, ``PRM_DATABASE_URL``, the file named by
``--config`` or ``PRM_CONFIG``, ``./prm.toml`` if present, built-in defaults.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from attrs import evolve, field, frozen

from .errors import ConfigError

__all__ = ["DEFAULT_DATABASE_URL", "Config", "Table", "load_config"]

DEFAULT_DATABASE_URL = "sqlite:///prm-data/prm.db"


def _resolve(value: Any, where: str) -> Any:
    """``value`` with an ``"env:NAME"`` string replaced by that environment variable's value;
    a table is wrapped so its own values resolve as they are read."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ConfigError(f"{where} refers to environment variable {name}, which is not set")
        return os.environ[name]
    if isinstance(value, Mapping):
        return value if isinstance(value, Table) else Table(value, where)
    if isinstance(value, list):
        return [_resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


class Table(Mapping[str, Any]):
    """A TOML table whose ``"env:NAME"`` secrets are read from the environment when they are
    used, not when the file is loaded: a secret of a plugin the running command never touches
    (``prm keys create`` and the IVR's Twilio token) need not be set."""

    __slots__ = ("_data", "_where")

    def __init__(self, data: Mapping[str, Any], where: str = "config") -> None:
        self._data = data
        self._where = where

    def __getitem__(self, key: str) -> Any:
        return _resolve(self._data[key], f"{self._where}.{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        # compares what the file says: reading the secrets just to compare could fail
        if isinstance(other, Table):
            return bool(self._data == other._data)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a table is mutable underneath, as a dict is

    def __repr__(self) -> str:
        return f"Table({list(self._data)!r})"  # keys only: values may be secrets


@frozen
class Config:
    """Resolved configuration. ``raw`` keeps every table for plugins to read (a :class:`Table`:
    its ``env:`` secrets are read from the environment as they are used)."""

    database_url: str = DEFAULT_DATABASE_URL
    public_url: str | None = None
    default_region: str = "US"
    source: Path | None = None
    raw: Mapping[str, Any] = field(factory=dict)

    def section(self, *path: str) -> Mapping[str, Any]:
        """The table at ``path`` (``config.section("touchpoints", "web")``), or ``{}``."""
        node: Any = self.raw
        for part in path:
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return node if isinstance(node, Mapping) else {}

    def flag(self, section: str, key: str, default: bool) -> bool:
        """``[section].key`` as true or false (``default`` when unset); any other value stops
        the hub with a :class:`~prm_core.errors.ConfigError` naming the key."""
        value = self.section(section).get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"[{section}].{key} must be true or false, not {value!r}")
        return value

    def touchpoint(self, name: str) -> Mapping[str, Any]:
        """The ``[touchpoints.<name>]`` table."""
        return self.section("touchpoints", name)

    def partner(self, name: str) -> Mapping[str, Any]:
        """The ``[partners.<name>]`` table."""
        return self.section("partners", name)

    def with_database(self, url: str | None) -> Config:
        return evolve(self, database_url=url) if url else self


def load_config(path: str | os.PathLike[str] | None = None, *, database_url: str | None = None) -> Config:
    """Load the configuration as ``prm serve`` does.

    ``path`` defaults to ``$PRM_CONFIG``, then ``./prm.toml`` when it exists. A named
    file that does not exist is an error; a missing ``./prm.toml`` is not.
    """
    explicit = path or os.environ.get("PRM_CONFIG")
    file = Path(explicit) if explicit else Path("prm.toml")
    raw: dict[str, Any] = {}
    source: Path | None = None
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        source = file
    elif explicit:
        raise ConfigError(f"config file {file} does not exist")
    table = Table(raw)
    db = table.get("database", {})
    server = table.get("server", {})
    identity = table.get("identity", {})
    url = database_url or os.environ.get("PRM_DATABASE_URL") or db.get("url") or DEFAULT_DATABASE_URL
    region = identity.get("default_region", "US")
    if not isinstance(region, str) or len(region) != 2:
        raise ConfigError(f"[identity].default_region must be a two-letter region code, got {region!r}")
    public_url = server.get("public_url")
    if public_url is not None and not str(public_url).startswith(("http://", "https://")):
        raise ConfigError(f"[server].public_url must start with http:// or https://, got {public_url!r}")
    return Config(
        database_url=url,
        public_url=public_url.rstrip("/") if public_url else None,
        default_region=region.upper(),
        source=source,
        raw=table,
    )
