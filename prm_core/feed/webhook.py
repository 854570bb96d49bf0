"""``kind = "webhook"``: POST batches of changes, signed with Standard Webhooks.

.. code-block:: toml

    [destinations.crm]
    kind = "webhook"
    url = "https://crm.example.com/prm/changes"
    secret = "env:CRM_WEBHOOK_SECRET"   # whsec_...
    timeout_s = 10

Each POST carries ``{"changes": [...]}`` (the shape of ``GET /v1/changes``) with the
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers of the Standard
Webhooks specification. The id is made of the batch's first and last positions: a batch
is always sent again as the same batch (the relay pins it before sending), so a receiver
that has seen an id can drop the repeat; each change's ``position`` deduplicates too.

A 2xx answer delivers the batch. 400, 413, 415 and 422 refuse it for good: its changes go
to the dead-letter list. Every other answer, timeouts and connection errors are retried.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from .changes import Change
from .destinations import DestinationSettings, Refused

__all__ = ["WebhookSink", "batch_id"]

# what a receiver answers to a batch it will never take: its content is refused. Any other
# 4xx (401/403 after a secret's rotation, 404/410 while a receiver is redeployed, 408, 429)
# is its state, not the changes': the batch is retried behind the breaker, never dropped.
REFUSING = frozenset({400, 413, 415, 422})


class DeliveryFailed(Exception):
    """A transient failure, with what may be shown (a status code, an error's type)."""


def batch_id(changes: Sequence[Change]) -> str:
    """The ``webhook-id`` of a batch: its first and last positions."""
    return f"prm-changes-{changes[0].position}-{changes[-1].position}"


class WebhookSink:
    """Delivers to one receiver over one kept-alive client session."""

    def __init__(self, settings: DestinationSettings) -> None:
        url = settings.text("url")
        if not url.startswith(("http://", "https://")):
            raise settings.invalid("url", "must start with http:// or https://")
        secret = settings.text("secret")
        try:
            if not secret.startswith("whsec_"):
                raise ValueError
            Webhook(secret)
        except Exception:
            problem = "must be a Standard Webhooks secret (whsec_...), or env:VARIABLE"
            raise settings.invalid("secret", problem) from None
        self.url = url
        self.secret = secret
        self.timeout_s = settings.number("timeout_s", default=10.0, minimum=0.1, maximum=300.0)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def deliver(self, changes: Sequence[Change]) -> None:
        body = json.dumps({"changes": [c.to_json() for c in changes]}, separators=(",", ":"))
        msg_id = batch_id(changes)
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(self.secret).sign(msg_id, now, body),
        }
        try:
            async with self._client().post(self.url, data=body.encode(), headers=headers) as resp:
                status = resp.status
                await resp.read()
        # OSError takes the total timeout too (TimeoutError is one)
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__} from the receiver") from exc
        if 200 <= status < 300:
            return
        if status in REFUSING:
            raise Refused([c.position for c in changes], f"the receiver answered {status}")
        raise DeliveryFailed(f"the receiver answered {status}")

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
