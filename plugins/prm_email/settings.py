"""``[touchpoints.email]``: how the email touch point sends and what it accepts.

The table is the touch point's, as ``[touchpoints.sms]`` is the SMS one's: absent (or empty),
the ``email`` touch point is not registered and no route is mounted; present, every key is
checked when the hub starts, and the first wrong one stops it with a
:class:`~prm_core.plugin.ConfigError` naming it (``[touchpoints.email].port``).
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal

from attrs import field, frozen

from prm_core.plugin import Config, ConfigError

__all__ = ["SECTION", "EmailSettings", "email_settings"]

SECTION = "[touchpoints.email]"
_KEYS = {
    "budget_ms",
    "transport",
    "host",
    "port",
    "username",
    "password",
    "security",
    "timeout_s",
    "from",
    "reply_to",
    "domain",
    "unsubscribe_url",
    "secret",
    "templates",
    "default_locale",
    "maildir",
    "mailgun_signing_key",
}
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$")
LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8}){0,3}$")
_PORTS = {"starttls": 587, "tls": 465, "none": 25}


@frozen
class EmailSettings:
    """``[touchpoints.email]``, checked. ``sender`` is the ``From`` header; ``domain`` the right side of
    every Message-ID (the sender's domain unless set); ``unsubscribe_url`` the public base of
    the unsubscribe links (``[server] public_url`` + the route unless set)."""

    sender: str
    sender_address: str
    secret: bytes = field(repr=False)
    domain: str = "localhost"
    transport: Literal["smtp", "maildir"] = "smtp"
    host: str = "localhost"
    port: int = 587
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    security: Literal["starttls", "tls", "none"] = "starttls"
    timeout_s: float = 30.0
    reply_to: str | None = None
    unsubscribe_url: str | None = None
    templates: Path | None = None
    default_locale: str = "en"
    maildir: Path | None = None
    mailgun_signing_key: str | None = field(default=None, repr=False)
    budget_ms: int = 2000


def _text(section: Any, key: str, *, required: bool = False, limit: int = 500) -> str | None:
    value = section.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or "\n" in value or "\r" in value:
        what = "is required: " if value is None else "must be "
        raise ConfigError(f"{SECTION}.{key} {what}a text of 1 to {limit} characters on one line")
    return value.strip()


def _address(raw: str, key: str) -> str:
    """The bare address of ``Name <addr>`` or ``addr``, refused unless it is one."""
    _name, addr = parseaddr(raw)
    local, at, domain = addr.partition("@")
    if not at or not local or not _DOMAIN.match(domain):
        raise ConfigError(
            f'{SECTION}.{key} must be an email address ("Shop <hello@shop.example>" or hello@shop.example)'
        )
    try:
        Address(addr_spec=addr)
    except Exception:
        raise ConfigError(f"{SECTION}.{key} must be an email address") from None
    return addr


def _path(raw: str | None, config: Config) -> Path | None:
    """A path setting, relative to the config file (to the working directory without one)."""
    if raw is None:
        return None
    path = Path(raw).expanduser()
    return path if path.is_absolute() or config.source is None else config.source.parent / path


def email_settings(config: Config) -> EmailSettings | None:
    """``[touchpoints.email]`` checked, or ``None`` when the table is absent (the touch point is off)."""
    section = config.touchpoint("email")
    if not section:
        return None
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise ConfigError(f"{SECTION}.{unknown[0]} is not a setting of the email touch point")
    transport = section.get("transport", "smtp")
    if transport not in ("smtp", "maildir"):
        raise ConfigError(f'{SECTION}.transport must be "smtp" or "maildir"')
    security = section.get("security", "starttls")
    if security not in _PORTS:
        raise ConfigError(f'{SECTION}.security must be "starttls", "tls" or "none"')
    port = section.get("port", _PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{SECTION}.port must be a port number from 1 to 65535")
    timeout = section.get("timeout_s", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 120:
        raise ConfigError(f"{SECTION}.timeout_s must be a number of seconds from 0 to 120")
    sender = _text(section, "from", required=True)
    assert sender is not None
    sender_address = _address(sender, "from")
    reply_to = _text(section, "reply_to")
    if reply_to is not None:
        _address(reply_to, "reply_to")
    secret = _text(section, "secret", required=True, limit=1000)
    assert secret is not None
    if len(secret) < 32:
        raise ConfigError(f"{SECTION}.secret must be at least 32 characters (a random secret; write env:VARIABLE)")
    domain = _text(section, "domain") or sender_address.partition("@")[2]
    if not _DOMAIN.match(domain):
        raise ConfigError(f"{SECTION}.domain must be a domain name (shop.example)")
    unsubscribe = _text(section, "unsubscribe_url", limit=1000)
    if unsubscribe is None and config.public_url:
        unsubscribe = config.public_url.rstrip("/") + "/v1/touchpoints/email/unsubscribe"
    if unsubscribe is not None and not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", unsubscribe):
        raise ConfigError(f"{SECTION}.unsubscribe_url must be an http(s) URL without a query (https://shop.example/u)")
    templates = _path(_text(section, "templates", limit=4096), config)
    if templates is not None and not templates.is_dir():
        raise ConfigError(f"{SECTION}.templates must name a directory of templates; {templates} is none")
    locale = _text(section, "default_locale", limit=35) or "en"
    if not LOCALE.match(locale):
        raise ConfigError(f"{SECTION}.default_locale must be a language tag (en, fr, pt-BR)")
    maildir = _path(_text(section, "maildir", limit=4096), config)
    if transport == "maildir" and maildir is None:
        raise ConfigError(f'{SECTION}.maildir is required with transport = "maildir": the directory to write to')
    signing = _text(section, "mailgun_signing_key", limit=500)
    budget = section.get("budget_ms", 2000)
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= 60_000:
        raise ConfigError(f"{SECTION}.budget_ms must be a whole number of milliseconds from 1 to 60000")
    return EmailSettings(
        sender=sender,
        sender_address=sender_address,
        secret=secret.encode(),
        domain=domain.lower(),
        transport=transport,
        host=_text(section, "host", limit=253) or "localhost",
        port=port,
        username=_text(section, "username"),
        password=_text(section, "password", limit=1000),
        security=security,
        timeout_s=float(timeout),
        reply_to=reply_to,
        unsubscribe_url=unsubscribe.rstrip("/") if unsubscribe else None,
        templates=templates,
        default_locale=locale.replace("_", "-"),
        maildir=maildir,
        mailgun_signing_key=signing,
        budget_ms=budget,
    )
