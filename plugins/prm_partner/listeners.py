"""Registering the hub's listener with TM Forum partners (the specifications' hub/listener pattern).

When the hub serves HTTP, for each ``tmf646``/``tmf687`` partner with ``register_listener``
(true by default), it sends ``POST {url}/hub`` with an ``EventSubscriptionInput``:
``{"callback": "{public_url}/v1/partners/{name}"}``; the partner then posts each notification
to ``{callback}/listener/{eventName}``. The partner's ``201`` ``EventSubscription`` ``id`` is
kept, and ``DELETE {url}/hub/{id}`` unregisters when the hub stops (``204``).

Registration runs in the background, so a partner that is down does not hold up the hub's
start: it is tried again after 1, 2, 4 ... s (at most a minute apart) until the partner
answers. A ``404``, ``405`` or ``501`` means the partner has no ``/hub``: it is told the
callback by hand (docs/partners.md), and that is logged once. The calls are signed like every
other call to the partner (Standard Webhooks, the partner's secret). Without
``[server] public_url`` the hub cannot say where it listens, and registers nothing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from attrs import define, field

from .client import signed_headers
from .settings import PartnerSettings

__all__ = ["LISTENERS", "ListenerRegistrations", "registration_service"]

log = structlog.get_logger(__name__)

UNSUPPORTED = frozenset({404, 405, 501})


@define
class ListenerRegistrations:
    """The hub's listener registrations with its partners: ``ids`` by partner name."""

    public_url: str
    partners: list[PartnerSettings]
    ids: dict[str, str] = field(factory=dict)
    unsupported: set[str] = field(factory=set)
    max_delay_s: float = 60.0

    def callback(self, partner: PartnerSettings) -> str:
        """The ``callback`` registered with ``partner``: its listener's base."""
        return f"{self.public_url}/v1/partners/{partner.name}"

    async def register(self, session: aiohttp.ClientSession, partner: PartnerSettings) -> None:
        """Register with ``partner`` until it answers (``CancelledError`` stops trying)."""
        body = json.dumps({"callback": self.callback(partner)})
        delay = 1.0
        while True:
            headers = signed_headers(partner.secret, f"msg_{uuid.uuid4().hex}", body)
            headers["Content-Type"] = "application/json"
            timeout = aiohttp.ClientTimeout(total=partner.timeout_s)
            try:
                async with session.post(f"{partner.url}/hub", data=body, headers=headers, timeout=timeout) as resp:
                    status = resp.status
                    answer: Any = await resp.json(content_type=None) if status == 201 else None
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                status, answer, reason = 0, None, type(exc).__name__
            else:
                reason = f"HTTP {status}"
            if status in UNSUPPORTED:
                self.unsupported.add(partner.name)
                log.info("partner has no listener registration", partner=partner.name, status=status)
                return
            if status == 201 and isinstance(answer, Mapping) and isinstance(answer.get("id"), str):
                self.ids[partner.name] = answer["id"]
                log.info("listener registered", partner=partner.name)
                return
            log.warning("listener registration failed", partner=partner.name, reason=reason, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay_s)

    async def unregister(self, session: aiohttp.ClientSession, partner: PartnerSettings) -> None:
        """``DELETE {url}/hub/{id}`` once; a partner that cannot be reached is logged."""
        sub = self.ids.pop(partner.name, None)
        if sub is None:
            return
        headers = signed_headers(partner.secret, f"msg_{uuid.uuid4().hex}", "")
        try:
            timeout = aiohttp.ClientTimeout(total=partner.timeout_s)
            async with session.delete(f"{partner.url}/hub/{sub}", headers=headers, timeout=timeout) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("listener unregistration failed", partner=partner.name, reason=type(exc).__name__)
            return
        if status not in (204, 404):  # 404: the partner forgot it already
            log.warning("listener unregistration failed", partner=partner.name, reason=f"HTTP {status}")


LISTENERS = web.AppKey("prm_partner.listeners", ListenerRegistrations)


def registration_service(
    settings: Callable[[], Mapping[str, PartnerSettings]], public_url: str | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` service: register with the partners at start, unregister at stop."""

    async def service(app: web.Application) -> AsyncIterator[None]:
        partners = [s for s in settings().values() if s.protocol in ("tmf646", "tmf687") and s.register_listener]
        if not partners or not public_url:
            if partners:
                log.warning("listener not registered with partners: [server] public_url is not set")
            yield
            return
        regs = ListenerRegistrations(public_url, partners)
        app[LISTENERS] = regs
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.ensure_future(regs.register(session, p)) for p in partners]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.gather(*(regs.unregister(session, p) for p in partners))

    return service
