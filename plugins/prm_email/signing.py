"""What the email touch point signs with ``[touchpoints.email] secret`` (HMAC-SHA256, compared in constant time).

- **Message-IDs**: ``<MESSAGE.ID.TAG@DOMAIN>``, ``TAG`` binding the hub's message id to the
  address it was sent to. The same message handed over again gets the same Message-ID; a
  reply or a bounce naming it counts only for that address (a forwarded reply from someone
  else threads nowhere, and a forged bounce suppresses no one).
- **Unsubscribe tokens**: ``CUSTOMER_ID.TAG``, in the ``List-Unsubscribe`` link: whoever
  holds the link can withdraw that customer's email marketing consent, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["message_id", "parse_message_id", "unsubscribe_token", "unsubscribed_customer"]

_ID = re.compile(r"^<?([A-Za-z0-9_-]{1,100})\.([0-9a-f]{20})@([A-Za-z0-9.-]{1,253})>?$")
_TOKEN = re.compile(r"^([A-Za-z0-9_-]{1,100})\.([A-Za-z0-9_-]{43})$")


def _tag(secret: bytes, *parts: str) -> bytes:
    return hmac.new(secret, "\x1f".join(parts).encode(), hashlib.sha256).digest()


def message_id(secret: bytes, domain: str, id_: str, to: str) -> str:
    """The Message-ID header of message ``id_`` sent to ``to`` (a normalized address)."""
    tag = _tag(secret, "message-id", id_, to).hex()[:20]
    return f"<{id_}.{tag}@{domain}>"


def parse_message_id(secret: bytes, domain: str, header: str, sender: str) -> str | None:
    """The hub's message id in a Message-ID of ours sent to ``sender``, else ``None``."""
    found = _ID.match(header.strip())
    if found is None or found.group(3).lower() != domain:
        return None
    id_, tag = found.group(1), found.group(2)
    expected = _tag(secret, "message-id", id_, sender).hex()[:20]
    return id_ if hmac.compare_digest(expected, tag) else None


def unsubscribe_token(secret: bytes, customer_id: str) -> str:
    tag = base64.urlsafe_b64encode(_tag(secret, "unsubscribe", customer_id)).decode().rstrip("=")
    return f"{customer_id}.{tag}"


def unsubscribed_customer(secret: bytes, token: str) -> str | None:
    """The customer id a valid unsubscribe token names, else ``None``."""
    found = _TOKEN.match(token)
    if found is None:
        return None
    expected = unsubscribe_token(secret, found.group(1))
    return found.group(1) if hmac.compare_digest(expected.encode(), token.encode()) else None
