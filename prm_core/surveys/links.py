"""``[surveys]``'s settings, and the signed links a survey is answered by.

A link is ``{base_url}/v1/surveys/{token}``. The token names the survey message, its kind
and when it expires, and carries an HMAC-SHA256 of them under the hub's survey key
(``[surveys] secret``, else a random key the migration stored in the database, so every hub
process on one database signs alike). Nothing else is in it: no customer id, no address.
A token whose signature does not match, or that has expired, is refused before anything is
read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.engine import Connection

from ..config import Config
from ..errors import ConfigError, InvalidInput
from ..store.tables import privacy_keys
from ..triggers.definitions import Act, Trigger, parse_duration

__all__ = [
    "BadToken",
    "SurveySettings",
    "check_survey_links",
    "load_link_key",
    "make_token",
    "read_token",
    "score_links",
    "survey_url",
]

KEY_NAME = "survey_links"
SETTINGS = ("base_url", "reply_window", "expires", "secret", "poll_s")
_CONTEXT = b"prm-survey-link\x1f"
_TOKEN = re.compile(
    r"^(?P<message>[A-Za-z0-9_-]{1,64})\.(?P<kind>csat|nps)\.(?P<exp>[0-9a-f]{1,12})\.(?P<sig>[A-Za-z0-9_-]{22})$"
)


@frozen
class SurveySettings:
    """``[surveys]``: where links point (``base_url``, else ``[server] public_url``; neither:
    no links, replies only), how long after a survey a reply that names no message answers it
    (``reply_window``), how long a survey can be answered at all (``expires``: a link's
    token lasts that long too), and how often the answers' reader looks when not woken."""

    base_url: str | None = None
    reply_window_s: float = 7 * 86400
    expires_s: float = 30 * 86400
    secret: str | None = None
    poll_s: float = 1.0

    @classmethod
    def from_config(cls, config: Config) -> SurveySettings:
        section = config.section("surveys")
        unknown = sorted(set(section) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"[surveys].{unknown[0]} is not a setting of [surveys] ({', '.join(SETTINGS)})")
        base = section.get("base_url", config.public_url)
        if base is not None and (not isinstance(base, str) or not base.startswith(("http://", "https://"))):
            raise ConfigError(f"[surveys].base_url must start with http:// or https://, got {base!r}")
        durations = {}
        for key, default in (("reply_window", "7d"), ("expires", "30d")):
            try:
                durations[key] = parse_duration(section.get(key, default), key)
            except Exception:
                raise ConfigError(f"[surveys].{key} must be a duration like '7d'") from None
            if durations[key] <= 0:
                raise ConfigError(f"[surveys].{key} must be longer than 0")
        if durations["reply_window"] > durations["expires"]:
            raise ConfigError("[surveys].reply_window must not be longer than [surveys].expires")
        secret = section.get("secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
            raise ConfigError("[surveys].secret must be a text of at least 16 characters (or env:NAME)")
        poll = section.get("poll_s", 1.0)
        if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0 < poll <= 60:
            raise ConfigError("[surveys].poll_s must be a number of seconds from 0 to 60")
        return cls(
            base_url=base.rstrip("/") if base else None,
            reply_window_s=durations["reply_window"],
            expires_s=durations["expires"],
            secret=secret,
            poll_s=float(poll),
        )


def check_survey_links(trigger: Trigger, settings: SurveySettings, *, config: bool) -> None:
    """A survey whose template says ``$survey_url`` needs a link to put there: without
    ``[surveys] base_url`` or ``[server] public_url`` the trigger is refused, naming its template."""
    if settings.base_url is not None:
        return
    for i, step in enumerate(trigger.steps):
        if isinstance(step, Act) and step.survey and step.template and "survey_url" in step.template:
            where = ("action" if "action" in trigger.definition else f"steps[{i}].act") + ".template"
            problem = "names $survey_url, but no link can be made: set [surveys] base_url or [server] public_url"
            if config:
                raise ConfigError(f"[triggers.{trigger.name}].{where} {problem}")
            raise InvalidInput(f"{where} {problem}", where)


def load_link_key(conn: Connection, settings: SurveySettings) -> bytes:
    """``[surveys] secret`` if set, else the database's own survey key."""
    if settings.secret:
        return settings.secret.encode()
    value = conn.execute(sa.select(privacy_keys.c.value).where(privacy_keys.c.name == KEY_NAME)).scalar_one()
    return str(value).encode()


class BadToken(Exception):
    """A survey token that is forged, damaged or expired (``reason`` says which, for logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _sign(key: bytes, body: str) -> str:
    mac = hmac.new(key, _CONTEXT + body.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def make_token(key: bytes, message_id: str, kind: str, expires_at: datetime) -> str:
    """The token of the survey ``message_id`` of ``kind``, valid until ``expires_at``."""
    body = f"{message_id}.{kind}.{int(expires_at.timestamp()):x}"
    return f"{body}.{_sign(key, body)}"


def read_token(key: bytes, token: str, now: datetime) -> tuple[str, str]:
    """``(message id, kind)`` of a token this hub signed that has not expired; else :class:`BadToken`."""
    found = _TOKEN.match(token) if isinstance(token, str) and len(token) <= 200 else None
    if found is None:
        raise BadToken("malformed")
    body = token.rsplit(".", 1)[0]
    if not hmac.compare_digest(_sign(key, body), found.group("sig")):
        raise BadToken("forged")
    if int(found.group("exp"), 16) < now.timestamp():
        raise BadToken("expired")
    return found.group("message"), found.group("kind")


def survey_url(base_url: str, token: str) -> str:
    return f"{base_url}/v1/surveys/{token}"


def score_links(data: Mapping[str, Any]) -> list[tuple[int, str]]:
    """One link per score of a survey message (``Message.data``), lowest first, for a sender
    that puts the scale itself in an email: each opens the answer page with that score
    chosen, and one press of its button sends it (opening a link never answers: mail
    scanners open links). Empty when the message has no survey link."""
    url = data.get("survey_url")
    survey = data.get("survey")
    if not isinstance(url, str) or not isinstance(survey, Mapping):
        return []
    scale = survey.get("scale")
    if not (isinstance(scale, list | tuple) and len(scale) == 2 and all(isinstance(n, int) for n in scale)):
        return []
    return [(n, f"{url}?score={n}") for n in range(scale[0], scale[1] + 1)]
