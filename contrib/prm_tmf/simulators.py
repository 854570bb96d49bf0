"""Partner simulators: small aiohttp servers speaking TMF646 and TMF687 as a partner would.

Used by the tests and by ``prm demo``. Each one:

- verifies every inbound call's Standard Webhooks signature (``standardwebhooks``) and
  answers ``401`` to a forged or stale one;
- honours ``Idempotency-Key``: a key seen before gets the first answer again, and is
  counted in ``duplicates`` (``delivered`` counts distinct keys that were served);
- can be taken ``down`` (``503`` with ``Retry-After``) and brought back;
- retries a callback the hub did not take (non-2xx), as Standard Webhooks senders do;
- answers after a configurable ``latency_ms``; with ``callback_url`` set it answers at once
  with a pending resource and sends the final state later, signed, as a TM Forum
  notification (the "late result" path).

.. code-block:: python

    sim = AppointmentSimulator(secret, latency_ms=150)
    runner = await sim.serve()          # on 127.0.0.1, a port the OS chose
    url = sim.url                       # http://127.0.0.1:PORT/tmf-api/appointmentManagement/v4
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

__all__ = ["AppointmentSimulator", "PartnerSimulator", "StockSimulator", "sign_headers"]

Handler = Any


def sign_headers(secret: str, body: str, msg_id: str | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body`` (a callback to the hub)."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        "Content-Type": "application/json",
    }


class PartnerSimulator:
    """What both simulators share: signatures, idempotency, outages, latency, callbacks."""

    prefix = "/"

    def __init__(
        self,
        secret: str,
        *,
        latency_ms: float = 0,
        callback_url: str | None = None,
        callback_delay_ms: float = 50,
    ) -> None:
        self.secret = secret
        self.webhook = Webhook(secret)
        self.latency_s = latency_ms / 1000
        self.callback_url = callback_url
        self.callback_delay_s = callback_delay_ms / 1000
        self.down = False
        self.retry_after_s = 1
        self.calls = 0
        self.peers: list[Any] = []
        self.refused_signatures = 0
        self.outage_answers = 0
        self.served: dict[str, tuple[int, dict[str, Any]]] = {}
        self.key_counts: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[Mapping[str, str]] = []
        self.callbacks_sent: list[tuple[int, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.base_url = ""

    # ---- what tests look at -----------------------------------------------------------------

    @property
    def delivered(self) -> int:
        """Distinct idempotency keys served."""
        return len(self.served)

    @property
    def duplicates(self) -> int:
        """Calls that repeated a key already served."""
        return sum(n - 1 for n in self.key_counts.values() if n > 1)

    @property
    def url(self) -> str:
        """The partner ``url`` to put in ``[partners.<name>]``."""
        return self.base_url + self.prefix.rstrip("/")

    # ---- serving -------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(self.routes())
        app.on_cleanup.append(self._cancel_callbacks)
        return app

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
        """Start on ``host``:``port`` (0: the OS chooses); ``stop()`` ends it."""
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]  # aiohttp keeps the bound socket here
        self.base_url = f"http://{host}:{sockets[0].getsockname()[1]}"
        return self._runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _cancel_callbacks(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def handle(self, request: web.Request, answer: Any) -> web.Response:
        """Verify, apply outages and idempotency, wait the latency, then ``answer(body, key)``."""
        self.calls += 1
        # the caller's address: calls over one kept-alive connection come from the same port
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        raw = await request.text()
        try:
            body = self.webhook.verify(raw, dict(request.headers))
        except WebhookVerificationError:
            self.refused_signatures += 1
            return web.json_response({"code": "401", "reason": "bad signature"}, status=401)
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return web.json_response({"code": "400", "reason": "Idempotency-Key is required"}, status=400)
        if self.down:
            self.outage_answers += 1
            return web.json_response(
                {"code": "503", "reason": "down for maintenance"},
                status=503,
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.key_counts[key] += 1
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if key in self.served:
            status, previous = self.served[key]
            return web.json_response(previous, status=status)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        status, result = answer(body, key)
        self.served[key] = (status, result)
        return web.json_response(result, status=status)

    def later(self, notification: dict[str, Any]) -> None:
        """Send ``notification`` to ``callback_url`` after ``callback_delay_ms``, signed.

        Like a Standard Webhooks sender, a non-2xx answer is retried (same ``webhook-id``,
        a fresh signature) after 0.1, 0.2, 0.4 ... s, five times at most: the hub may not have
        written down our synchronous answer yet when the notification arrives.
        """
        if not self.callback_url:
            return
        msg_id = f"msg_{uuid.uuid4().hex}"

        async def send() -> None:
            await asyncio.sleep(self.callback_delay_s)
            text = json.dumps(notification)
            async with aiohttp.ClientSession() as session:
                for attempt in range(6):
                    headers = sign_headers(self.secret, text, msg_id)
                    async with session.post(self.callback_url, data=text, headers=headers) as resp:  # type: ignore[arg-type]
                        self.callbacks_sent.append((resp.status, notification))
                        if resp.status < 300:
                            return
                    await asyncio.sleep(0.1 * 2**attempt)

        task = asyncio.ensure_future(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(when: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


class AppointmentSimulator(PartnerSimulator):
    """A field-service firm's TMF646 Appointment Management v4 API.

    Technicians visit in three-hour slots, 09:00 and 13:00 UTC on working days, ``technicians``
    visits per slot. A booking takes the first free slot inside the requested ``validFor``
    (``failed`` if none fits);
    with ``callback_url`` it is ``initialized`` at once and ``confirmed`` by notification.
    """

    prefix = "/tmf-api/appointmentManagement/v4"

    def __init__(self, secret: str, *, technicians: int = 1, **kw: Any) -> None:
        super().__init__(secret, **kw)
        self.technicians = technicians
        self.appointments: dict[str, dict[str, Any]] = {}
        self.booked: Counter[datetime] = Counter()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{self.prefix}/appointment", self.create_appointment),
            web.post(f"{self.prefix}/searchTimeSlot", self.search_time_slot),
            web.get(f"{self.prefix}/appointment/{{id}}", self.get_appointment),
        ]

    def slots(self, start: datetime, end: datetime, limit: int = 10) -> list[datetime]:
        found: list[datetime] = []
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        while day < end and len(found) < limit:
            if day.weekday() < 5:
                for hour in (9, 13):
                    slot = day.replace(hour=hour)
                    if slot >= start and slot + timedelta(hours=3) <= end and self.booked[slot] < self.technicians:
                        found.append(slot)
            day += timedelta(days=1)
        return found[:limit]

    async def search_time_slot(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any], _key: str) -> tuple[int, dict[str, Any]]:
            (wanted,) = body.get("requestedTimeSlot") or [{}]
            start = _parse((wanted.get("validFor") or {}).get("startDateTime"))
            end = _parse((wanted.get("validFor") or {}).get("endDateTime"))
            if start is None or end is None:
                return 400, {"code": "400", "reason": "requestedTimeSlot.validFor is required"}
            free = [
                {
                    "id": f"slot-{int(s.timestamp())}",
                    "validFor": {"startDateTime": _iso(s), "endDateTime": _iso(s + timedelta(hours=3))},
                }
                for s in self.slots(start, end)
            ]
            return 201, {"id": uuid.uuid4().hex[:12], "@type": "SearchTimeSlot", "status": "created",
                         "requestedTimeSlot": body["requestedTimeSlot"], "availableTimeSlot": free}  # fmt: skip

        return await self.handle(request, answer)

    async def create_appointment(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
            if body.get("@type") != "Appointment":
                return 400, {"code": "400", "reason": "@type must be Appointment"}
            period = body.get("validFor") or {}
            start, end = _parse(period.get("startDateTime")), _parse(period.get("endDateTime"))
            if start is None or end is None:
                return 400, {"code": "400", "reason": "validFor.startDateTime and endDateTime are required"}
            free = self.slots(start, end, limit=1)
            appt_id = f"appt-{len(self.appointments) + 1}"
            appt = {**body, "id": appt_id, "href": f"{self.prefix}/appointment/{appt_id}"}
            if not free:
                appt["status"] = "failed"
            else:
                self.booked[free[0]] += 1
                appt["validFor"] = {"startDateTime": _iso(free[0]), "endDateTime": _iso(free[0] + timedelta(hours=3))}
                appt["status"] = "initialized" if self.callback_url else "confirmed"
            self.appointments[appt_id] = appt
            if self.callback_url and free:
                confirmed = {**appt, "status": "confirmed"}
                self.appointments[appt_id] = confirmed
                self.later(
                    {
                        "eventId": uuid.uuid4().hex,
                        "eventTime": _iso(datetime.now(tz=UTC)),
                        "eventType": "AppointmentStateChangeEvent",
                        "event": {"appointment": confirmed},
                    }
                )
            return 201, appt

        return await self.handle(request, answer)

    async def get_appointment(self, request: web.Request) -> web.Response:
        appt = self.appointments.get(request.match_info["id"])
        if appt is None:
            return web.json_response({"code": "404", "reason": "no such appointment"}, status=404)
        return web.json_response(appt)


class StockSimulator(PartnerSimulator):
    """A supplier's TMF687 Stock Management v4 API over ``stock`` (part id -> units held).

    ``checkProductStock`` answers ``200`` ``done`` at once, or with ``callback_url`` set,
    ``201`` ``acknowledged`` and the result later in a ``CheckProductStockStateChangeEvent``.
    """

    prefix = "/tmf-api/stockManagement/v4"

    def __init__(self, secret: str, stock: Mapping[str, int] | None = None, **kw: Any) -> None:
        super().__init__(secret, **kw)
        self.stock = dict(stock or {})
        self.reserved: Counter[str] = Counter()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{self.prefix}/checkProductStock", self.check_product_stock),
            web.post(f"{self.prefix}/reserveProductStock", self.reserve_product_stock),
        ]

    def _checked(self, item: Mapping[str, Any]) -> dict[str, Any]:
        part = ((item.get("checkedProductStock") or {}).get("stockedProduct") or {}).get("id")
        wanted = (item.get("requestedQuantity") or {}).get("amount") or 1
        held = self.stock.get(str(part), 0) - self.reserved[str(part)]
        result = "available" if held >= wanted else "partial" if held > 0 else "unavailable"
        stock = {
            **(item.get("checkedProductStock") or {}),
            "productStockLevel": {"amount": max(held, 0), "units": "unit"},
        }
        return {**item, "checkedProductStock": stock, "availabilityResult": result, "state": "done"}

    async def check_product_stock(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any], _key: str) -> tuple[int, dict[str, Any]]:
            items = body.get("checkProductStockItem")
            if body.get("@type") != "CheckProductStock" or not isinstance(items, list):
                return 400, {"code": "400", "reason": "a CheckProductStock with checkProductStockItem is required"}
            task_id = uuid.uuid4().hex[:12]
            done = {**body, "id": task_id, "state": "done", "checkProductStockItem": [self._checked(i) for i in items]}
            if self.callback_url:
                self.later(
                    {
                        "eventId": uuid.uuid4().hex,
                        "eventTime": _iso(datetime.now(tz=UTC)),
                        "eventType": "CheckProductStockStateChangeEvent",
                        "event": {"checkProductStock": done},
                    }
                )
                return 201, {**body, "id": task_id, "state": "acknowledged"}
            return 200, done

        return await self.handle(request, answer)

    async def reserve_product_stock(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any], _key: str) -> tuple[int, dict[str, Any]]:
            items = []
            for item in body.get("reserveProductStockItem") or []:
                part = str(((item.get("productStock") or {}).get("stockedProduct") or {}).get("id"))
                amount = (item.get("quantity") or {}).get("amount") or 1
                ok = self.stock.get(part, 0) - self.reserved[part] >= amount
                if ok:
                    self.reserved[part] += amount
                items.append({**item, "state": "done" if ok else "terminatedWithError"})
            return 201, {**body, "id": uuid.uuid4().hex[:12], "state": "done", "reserveProductStockItem": items}

        return await self.handle(request, answer)
