"""``[touchpoints.sms]``: the Twilio account, the sender, the callbacks and the keywords.

The table is the touch point's, as ``[touchpoints.ivr]`` is the IVR's: absent (or empty), the
``sms`` touch point is not registered and no route is mounted; present, every key is checked
as the hub starts, and a wrong one stops it with a line naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from prm_core.plugin import Config, ConfigError

__all__ = ["DEFAULT_HELP", "PERMANENT_ERROR_CODES", "SECTION", "SmsSettings"]

SECTION = "[touchpoints.sms]"
TWILIO_API = "https://api.twilio.com"
# Twilio's error codes that retrying the same number cannot fix: not a valid number (21211),
# not a mobile number (21614), the recipient replied STOP (21610), unreachable or unknown
# handset (30003, 30005), a landline or an unreachable carrier (30006)
PERMANENT_ERROR_CODES: frozenset[int] = frozenset({21211, 21610, 21614, 30003, 30005, 30006})
DEFAULT_HELP = "Reply STOP to unsubscribe, START to subscribe again. Msg&data rates may apply."
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
KEYS = frozenset(
    {
        "account_sid",
        "auth_token",
        "from",
        "messaging_service_sid",
        "callback_url",
        "api_base",
        "help_text",
        "stop_reply",
        "start_reply",
        "permanent_error_codes",
        "dialogue_timeout_hours",
        "timeout_s",
        "budget_ms",
    }
)


def _text(section: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = section.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{SECTION}.{key} must be a string")
    return value


def _url(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{SECTION}.{key} must start with http:// or https://")
    return value.rstrip("/")


def _number(section: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{SECTION}.{key} must be a number from {low:g} to {high:g}")
    return float(value)


@frozen
class SmsSettings:
    """What the SMS touch point needs, checked. ``sender`` is a phone number (E.164), a short
    code or an alphanumeric sender id; ``messaging_service_sid`` may replace it."""

    account_sid: str
    auth_token: str
    sender: str | None
    messaging_service_sid: str | None
    callback_url: str
    api_base: str = TWILIO_API
    help_text: str = DEFAULT_HELP
    stop_reply: str | None = None
    start_reply: str | None = None
    permanent_error_codes: frozenset[int] = PERMANENT_ERROR_CODES
    dialogue_timeout_hours: float = 24.0
    timeout_s: float = 10.0
    budget_ms: int = 1000

    @classmethod
    def from_config(cls, config: Config) -> SmsSettings | None:
        """The settings, or ``None`` when ``[touchpoints.sms]`` is absent or empty."""
        section = config.touchpoint("sms")
        if not section:
            return None
        unknown = sorted(set(section) - KEYS)
        if unknown:
            raise ConfigError(f"{SECTION} has an unknown key {unknown[0]!r}")
        account_sid = _text(section, "account_sid")
        if not account_sid or not _ACCOUNT_SID.match(account_sid):
            raise ConfigError(
                f"{SECTION}.account_sid must be the Twilio account SID (AC and 32 hex digits, or env:VAR)"
            )
        token = _text(section, "auth_token")
        if not token:
            raise ConfigError(f"{SECTION}.auth_token must be the Twilio auth token (or env:VAR)")
        sender = _text(section, "from") or None
        service = _text(section, "messaging_service_sid") or None
        if sender is None and service is None:
            raise ConfigError(f"{SECTION} needs `from` (the sending number) or `messaging_service_sid`")
        if service is not None and not _SERVICE_SID.match(service):
            raise ConfigError(f"{SECTION}.messaging_service_sid must be MG and 32 hex digits")
        callback = _url(_text(section, "callback_url") or config.public_url, "callback_url")
        if callback is None:
            raise ConfigError(
                f"{SECTION}.callback_url (or [server].public_url) is required: Twilio signs the URL "
                "it calls, and the hub checks the signature against it"
            )
        codes = section.get("permanent_error_codes", sorted(PERMANENT_ERROR_CODES))
        if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise ConfigError(f"{SECTION}.permanent_error_codes must be a list of Twilio error codes (numbers)")
        help_text = _text(section, "help_text", DEFAULT_HELP) or DEFAULT_HELP
        return cls(
            account_sid=account_sid,
            auth_token=token,
            sender=sender,
            messaging_service_sid=service,
            callback_url=callback,
            api_base=_url(_text(section, "api_base", TWILIO_API), "api_base") or TWILIO_API,
            help_text=help_text[:1600],
            stop_reply=(_text(section, "stop_reply") or None),
            start_reply=(_text(section, "start_reply") or None),
            permanent_error_codes=frozenset(codes),
            dialogue_timeout_hours=_number(section, "dialogue_timeout_hours", 24, 0.01, 24 * 365),
            timeout_s=_number(section, "timeout_s", 10, 0.1, 25),
            budget_ms=int(_number(section, "budget_ms", 1000, 1, 60_000)),
        )
