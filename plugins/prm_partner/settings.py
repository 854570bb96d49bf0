"""``[partners.<name>]``: how to reach each partner, read once when the hub starts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from prm_core.plugin import Config, ConfigError

__all__ = ["PROTOCOLS", "PartnerSettings", "partner_settings"]

PROTOCOLS = ("tmf646", "tmf687", "cloudevents")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@frozen
class PartnerSettings:
    """One partner: its role (``field_service``, ``inventory``, ...), the protocol it speaks,
    its base ``url``, the Standard Webhooks ``secret`` used both ways, the time one call
    may take (``timeout_ms``), and whether the hub registers its listener at the partner's
    ``/hub`` (``register_listener``, TM Forum partners; true by default).

    A ``field_service`` firm may say what it takes (:mod:`prm_partner.failover`): the
    ``regions`` it covers, the ``skills`` it has, the customer ``tiers`` it serves (each empty:
    any), and its ``price`` per visit."""

    name: str
    role: str
    protocol: str
    url: str
    secret: str
    timeout_ms: int = 800
    register_listener: bool = True
    regions: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    price: float | None = None

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000


def _one(name: str, table: Mapping[str, Any]) -> PartnerSettings:
    where = f"[partners.{name}]"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: a partner name is lower-case letters, digits, '-' or '_'")
    role = table.get("role")
    if not isinstance(role, str) or not role:
        raise ConfigError(f"{where}.role is required (field_service, inventory, notification, ...)")
    protocol = table.get("protocol", "cloudevents")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url must be an http:// or https:// URL")
    secret = table.get("secret")
    if not isinstance(secret, str) or not secret.startswith("whsec_") or len(secret) < 20:
        raise ConfigError(f"{where}.secret must be a Standard Webhooks secret (whsec_...), or env:VARIABLE")
    timeout = table.get("timeout_ms", 800)
    if not isinstance(timeout, int) or not 1 <= timeout <= 60_000:
        raise ConfigError(f"{where}.timeout_ms must be a whole number of milliseconds from 1 to 60000")
    register = table.get("register_listener", True)
    if not isinstance(register, bool):
        raise ConfigError(f"{where}.register_listener must be true or false")
    terms = {key: _names(where, key, table.get(key)) for key in ("regions", "skills", "tiers")}
    price = table.get("price")
    if price is not None and (isinstance(price, bool) or not isinstance(price, int | float) or price < 0):
        raise ConfigError(f"{where}.price must be a number, zero or more")
    return PartnerSettings(
        name,
        role,
        protocol,
        url.rstrip("/"),
        secret,
        timeout,
        register,
        **terms,
        price=None if price is None else float(price),
    )


def _names(where: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key} must be a list of names")
    return tuple(value)


def partner_settings(config: Config) -> dict[str, PartnerSettings]:
    """Every ``[partners.<name>]`` table, validated (a bad one stops the hub, naming the key)."""
    tables = config.section("partners")
    found = {name: _one(name, table) for name, table in tables.items() if isinstance(table, Mapping)}
    lease_s = float(config.section("outbox").get("lease_s", 30))
    for s in found.values():
        # a call outliving its lease would be sent again by another dispatcher while it runs
        if s.timeout_s >= lease_s:
            raise ConfigError(f"[partners.{s.name}].timeout_ms must be shorter than [outbox].lease_s ({lease_s:g} s)")
    return found
