"""Misspelled settings, found before they are silently ignored.

A table the hub does not read (``[partner.fs]`` for ``[partners.fs]``), a touch point no
plugin registers (``[touchpoints.wbe]``) or a key the core does not know (``[server] prot``)
would otherwise start a hub that quietly never uses it. :func:`config_warnings` names each,
with the nearest known name (:mod:`difflib`). Plugins own the tables under ``touchpoints.*``,
``partners.*`` and ``destinations.*``: the names there are checked against what the plugins
registered, their keys are the plugins' to check.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping

from .config import Config

__all__ = ["CORE_TABLES", "config_warnings"]

# Every top-level table the core reads, with the keys it knows (None: keys not checked here,
# the table's own parser refuses what it does not understand)
CORE_TABLES: Mapping[str, frozenset[str] | None] = {
    "database": frozenset({"url", "busy_timeout_ms"}),
    "server": frozenset(
        {
            "public_url",
            "body_timeout_s",
            "max_pending_events",
            "freeze_heap",
            "rate_limit",
            "rate_limit_public",
            "rate_limit_keyless",
            "rate_limit_log_s",
        }
    ),
    "identity": frozenset({"default_region", "shared_namespaces", "rules"}),
    "ingest": frozenset({"journal", "max_depth", "batch", "batch_ms", "read_wait_ms", "sync_wait_ms", "retry_after_s"}),
    "outbox": frozenset({"lease_s", "poll_ms", "retry_base_ms", "retry_cap_s", "max_attempts"}),
    "planning": frozenset({"on_ingest", "currency"}),
    "money": frozenset({"reporting_currency", "rates", "rates_file"}),
    "feed": frozenset({"enabled", "retention_days", "prune_interval_s", "destination_lease_s"}),
    "privacy": None,
    "tiers": None,
    "value": None,
    "entitlements": None,
    "catalog": None,
    "offers": None,
    "knowledge": None,
    "partner_breaker": None,
    # tables of named things plugins own: the names are checked below
    "touchpoints": None,
    "partners": None,
    "destinations": None,
    # [triggers.NAME] tables and [triggers]'s own settings: prm_core.triggers checks both at start
    "triggers": None,
    # [surveys]: prm_core.surveys refuses a key it does not know at start
    "surveys": None,
}


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def config_warnings(config: Config, touchpoints: Collection[str], *, knowledge: Collection[str] = ()) -> list[str]:
    """One line per table or key in ``config`` that nothing reads.

    ``touchpoints`` are the registered touch point names (each ``[touchpoints.<name>]`` must be
    one); ``knowledge`` the registered value providers (each ``[knowledge.<name>]``)."""
    found: list[str] = []
    raw = config.raw
    for table in raw:
        if table not in CORE_TABLES:
            found.append(f"[{table}] is not a table the hub reads{_hint(table, CORE_TABLES)}")
            continue
        keys = CORE_TABLES[table]
        value = raw[table]
        if keys is None or not isinstance(value, Mapping):
            continue
        for key in value:
            if key not in keys:
                found.append(f"[{table}].{key} is not a setting the hub reads{_hint(key, keys)}")
    tps = raw.get("touchpoints", {})
    if isinstance(tps, Mapping):
        for name in tps:
            if name not in touchpoints:
                found.append(
                    f"[touchpoints.{name}] is not a registered touch point{_hint(name, touchpoints)}"
                    f" (registered: {', '.join(sorted(touchpoints)) or 'none'})"
                )
    known = raw.get("knowledge", {})
    if knowledge and isinstance(known, Mapping):
        for name in known:
            if name not in knowledge:
                found.append(f"[knowledge.{name}] is not a registered value provider{_hint(name, knowledge)}")
    for table in ("partners", "destinations"):
        named = raw.get(table, {})
        if isinstance(named, Mapping):
            for name, body in named.items():
                if not isinstance(body, Mapping):
                    found.append(f"[{table}].{name} must be a table ([{table}.{name}])")
    return found
