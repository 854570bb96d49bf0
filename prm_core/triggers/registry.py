"""The triggers a hub knows: ``[triggers.NAME]`` from the config and those made through the API.

Both are rows of the ``triggers`` table, so pausing one (either kind) is kept across restarts
and seen by every hub process. At start the configured ones are written there (the config
wins over a row of the same name; a configured trigger no longer in the config is removed);
the API adds, replaces and pauses its own.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from ..config import Config
from ..errors import ConfigError, InvalidInput, NotFound, PrmError
from ..store.tables import triggers
from .definitions import Act, Trigger, parse_trigger
from .guards import SETTINGS, GuardSettings

__all__ = ["check_touchpoints", "configured_triggers", "load_triggers", "save_trigger", "set_paused", "sync_configured"]

log = structlog.get_logger(__name__)


class Conflict(PrmError):
    """A trigger of that name comes from the config: the API cannot replace it."""


def configured_triggers(config: Config) -> dict[str, Trigger]:
    """Every ``[triggers.NAME]`` table, compiled; the first broken one raises
    :class:`ConfigError` naming its key. The other keys of ``[triggers]`` are settings."""
    section = config.raw.get("triggers", {})
    if not isinstance(section, Mapping):
        raise ConfigError("[triggers] must be a table")
    found: dict[str, Trigger] = {}
    for name, raw in section.items():
        if isinstance(raw, Mapping):
            found[name] = parse_trigger(name, raw, config=True)
        elif name not in SETTINGS:
            raise ConfigError(
                f"[triggers].{name} is not a setting of [triggers] ({', '.join(SETTINGS)}); a trigger is a table"
            )
    return found


def check_touchpoints(trigger: Trigger, settings: GuardSettings, touchpoints: Collection[str], *, config: bool) -> None:
    """Every act must name a registered touch point, or have one by default (``[triggers]
    touchpoint``; a message's default is the touch point of its channel, found when it is sent)."""
    for i, step in enumerate(trigger.steps):
        if not isinstance(step, Act):
            continue
        where = "action" if "action" in trigger.definition else f"steps[{i}].act"
        named = step.touchpoint or (settings.touchpoint if step.kind != "message" else None)
        problem = None
        if named is not None and named not in touchpoints:
            problem = f"names {named!r}, which is not a registered touch point ({', '.join(sorted(touchpoints))})"
        elif named is None and step.kind != "message":
            problem = "is required: the touch point the action is recorded at (or set [triggers].touchpoint)"
        if problem:
            if config:
                raise ConfigError(f"[triggers.{trigger.name}].{where}.touchpoint {problem}")
            raise InvalidInput(f"{where}.touchpoint {problem}", f"{where}.touchpoint")


def sync_configured(conn: Connection, configured: Mapping[str, Trigger], now: datetime) -> None:
    """Write the configured triggers to the table (keeping whether each is paused)."""
    t = triggers.c
    rows = {r.name: r for r in conn.execute(sa.select(t.name, t.source))}
    for name, trigger in configured.items():
        values = {"source": "config", "definition": dict(trigger.definition), "updated_at": now}
        if name in rows:
            conn.execute(triggers.update().where(t.name == name).values(**values))
        else:
            conn.execute(triggers.insert().values(name=name, paused=False, created_at=now, **values))
    gone = [n for n, r in rows.items() if r.source == "config" and n not in configured]
    if gone:
        conn.execute(triggers.delete().where(t.name.in_(gone)))


def load_triggers(conn: Connection) -> tuple[dict[str, Trigger], set[str], dict[str, str]]:
    """Every trigger of the table, compiled: (by name, the paused ones, each one's source).
    A stored definition that no longer compiles is left out, and logged."""
    found: dict[str, Trigger] = {}
    paused: set[str] = set()
    sources: dict[str, str] = {}
    for row in conn.execute(sa.select(triggers).order_by(triggers.c.name)):
        try:
            found[row.name] = parse_trigger(row.name, row.definition, config=row.source == "config")
        except (ConfigError, InvalidInput) as exc:
            log.error("stored trigger does not compile", trigger=row.name, error=str(exc)[:300])
            continue
        sources[row.name] = row.source
        if row.paused:
            paused.add(row.name)
    return found, paused, sources


def save_trigger(conn: Connection, trigger: Trigger, now: datetime) -> bool:
    """Create or replace a trigger of the API; returns whether it is new. A configured one
    of that name is a :class:`Conflict` (the config is its source)."""
    t = triggers.c
    row = conn.execute(sa.select(t.source).where(t.name == trigger.name)).first()
    if row is not None and row.source == "config":
        raise Conflict(f"trigger {trigger.name!r} is configured in [triggers.{trigger.name}]; change it there")
    values: dict[str, Any] = {"source": "api", "definition": dict(trigger.definition), "updated_at": now}
    if row is None:
        conn.execute(triggers.insert().values(name=trigger.name, paused=False, created_at=now, **values))
        return True
    conn.execute(triggers.update().where(t.name == trigger.name).values(**values))
    return False


def set_paused(conn: Connection, name: str, paused: bool, now: datetime) -> None:
    t = triggers.c
    done = conn.execute(triggers.update().where(t.name == name).values(paused=paused, updated_at=now)).rowcount
    if not done:
        raise NotFound(f"no trigger {name!r}")
