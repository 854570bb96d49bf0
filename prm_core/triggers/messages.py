"""Messages a trigger sends through a touch point, and what sending them gave.

The core writes the message; a touch point plugin (email, SMS) sends it by implementing
``prm_send_message`` (:mod:`prm_core.hookspecs`). A channel no plugin sends on makes the
trigger's run ``failed``, with that reason, in ``GET /v1/triggers/{name}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from attrs import field, frozen

from ..model import _frozen_dict

__all__ = ["Message", "MessageResult"]


@frozen
class Message:
    """One message to one customer.

    ``id`` is the same every time this message is handed over (after a crash, a retry):
    a sender uses it as its idempotency key or Message-ID so it never sends twice. ``to``
    is the customer's address on the channel (their ``email`` identity for ``email``,
    ``phone`` for ``sms``), ``None`` when they have none there. ``locale`` and
    ``first_name`` are the customer's traits of those names (``None`` unless a text): what a
    sender needs to choose a template in the customer's language and greet them.
    """

    id: str
    channel: str
    customer_id: str
    text: str
    purpose: Literal["marketing", "transactional"]
    trigger: str
    to: str | None = None
    subject: str | None = None
    data: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)
    locale: str | None = field(default=None, converter=lambda v: _short_text(v, 35))
    first_name: str | None = field(default=None, converter=lambda v: _short_text(v, 100))


def _short_text(value: Any, limit: int) -> str | None:
    """A trait as a message carries it: a non-empty text of at most ``limit`` characters, else ``None``."""
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


@frozen
class MessageResult:
    """What the sender did: ``sent`` (``ref``: the provider's id for it) or ``failed``
    (``reason``, recorded on the trigger's run; a failure to retry is an exception instead)."""

    status: Literal["sent", "failed"]
    reason: str = ""
    ref: str | None = None
