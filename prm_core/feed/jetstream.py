"""``kind = "nats"``: publish each change to NATS JetStream.

.. code-block:: toml

    [destinations.bus]
    kind = "nats"
    servers = ["nats://127.0.0.1:4222"]
    stream = "PRM_CHANGES"        # created when missing, capturing <subject>.>
    subject = "prm.changes"       # each change on <subject>.<type>

Each message is the change's JSON with the ``Nats-Msg-Id`` header set to its position, so
JetStream's duplicate window drops a change sent again after a retry or a restart. The
batch is published in feed order and delivered once the stream acknowledged every message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import nats
from nats.js.errors import NotFoundError

from .changes import Change
from .destinations import DestinationSettings

__all__ = ["NatsSink"]


class NatsSink:
    """Publishes to one JetStream stream over one connection, made on first use."""

    def __init__(self, settings: DestinationSettings) -> None:
        self.servers = settings.texts("servers", default=["nats://127.0.0.1:4222"])
        for server in self.servers:
            if not server.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise settings.invalid("servers", "must list nats:// (or tls://, ws://, wss://) addresses")
        self.stream = settings.text("stream", default="PRM_CHANGES")
        if not all(ch.isalnum() or ch in "-_" for ch in self.stream):
            raise settings.invalid("stream", "must be a stream name (letters, digits, - and _)")
        self.subject = settings.text("subject", default="prm.changes")
        if any(ch in self.subject for ch in " *>") or self.subject.startswith(".") or self.subject.endswith("."):
            raise settings.invalid("subject", "must be a subject prefix without spaces or wildcards")
        self.timeout_s = settings.number("timeout_s", default=10.0, minimum=0.1, maximum=300.0)
        self._nc: Any = None
        self._js: Any = None

    async def _jetstream(self) -> Any:
        if self._js is None or self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(
                servers=self.servers, connect_timeout=self.timeout_s, max_reconnect_attempts=2, allow_reconnect=True
            )
            js = self._nc.jetstream(timeout=self.timeout_s)
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                await js.add_stream(name=self.stream, subjects=[f"{self.subject}.>"])
            self._js = js
        return self._js

    async def deliver(self, changes: Sequence[Change]) -> None:
        try:
            js = await self._jetstream()
        except Exception:
            await self.close()  # connect again next time
            raise
        # started in feed order: one connection sends them in that order; then every ack is awaited
        acks = [
            asyncio.ensure_future(
                js.publish(
                    f"{self.subject}.{change.type}",
                    json.dumps(change.to_json(), separators=(",", ":")).encode(),
                    stream=self.stream,
                    headers={"Nats-Msg-Id": change.position},
                )
            )
            for change in changes
        ]
        results = await asyncio.gather(*acks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except Exception:
                await nc.close()
