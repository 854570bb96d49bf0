"""Partner simulators: small aiohttp servers speaking TMF646 and TMF687 v4.0.0 as a partner would.

Used by the tests and by ``prm demo``. Each one:

- serves the specification's base path (``/tmf-api/appointment/v4``, ``/tmf-api/stock/v4``)
  and sends only what the v4.0.0 definitions allow (``sent`` keeps every answer and
  notification with the name of its definition, which the tests check against the schemas);
- verifies every inbound call's Standard Webhooks signature (``standardwebhooks``) and
  answers ``401`` to a forged or stale one;
- honours ``Idempotency-Key``: a key seen before gets the first answer again, and is
  counted in ``duplicates`` (``delivered`` counts distinct keys that were served);
- can be taken ``down`` (``503`` with ``Retry-After``) and brought back;
- takes listener registrations at ``POST /hub`` (``201`` with the ``EventSubscription``)
  and ``DELETE /hub/{id}`` (``204``), and sends notifications to
  ``{callback}/listener/{eventName}`` of each registered listener, signed;
- with ``callback_url`` set, also sends every notification to that one URL (the hub's
  ``/v1/partners/{name}/callbacks``);
- retries a notification the hub did not take (non-2xx), as Standard Webhooks senders do;
- answers after a configurable ``latency_ms``, and not at all while ``hold()`` keeps it back
  (until ``release()``: a partner late on purpose, whatever the machine's speed); with
  ``answer_later`` (or ``callback_url``) set it answers at once with a pending resource and
  sends the later states as notifications (the "late result" path).

.. code-block:: python

    sim = AppointmentSimulator(secret, latency_ms=150)
    runner = await sim.serve()          # on 127.0.0.1, a port the OS chose
    url = sim.url                       # http://127.0.0.1:PORT/tmf-api/appointment/v4
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


def _error(status: int, reason: str, **headers: str) -> web.Response:
    """The specifications' ``Error``: ``code`` and ``reason`` are required strings."""
    return web.json_response({"code": str(status), "reason": reason}, status=status, headers=headers or None)


def _bad(reason: str) -> tuple[int, str, dict[str, Any]]:
    """A ``400`` answer with its ``Error``."""
    return 400, "Error", {"code": "400", "reason": reason}


def notification(event_type: str, key: str, resource: Mapping[str, Any]) -> dict[str, Any]:
    """A TM Forum v4 notification: ``{"eventId", "eventTime", "eventType", "event": {key: resource}}``."""
    return {
        "eventId": uuid.uuid4().hex,
        "eventTime": _iso(datetime.now(tz=UTC)),
        "eventType": event_type,
        "event": {key: dict(resource)},
    }


class PartnerSimulator:
    """What both simulators share: signatures, idempotency, outages, latency, listeners."""

    prefix = "/"

    def __init__(
        self,
        secret: str,
        *,
        latency_ms: float = 0,
        callback_url: str | None = None,
        callback_delay_ms: float = 50,
        answer_later: bool = False,
    ) -> None:
        self.secret = secret
        self.webhook = Webhook(secret)
        self.latency_s = latency_ms / 1000
        self.callback_url = callback_url
        self.callback_delay_s = callback_delay_ms / 1000
        self.answer_later = answer_later
        self.down = False
        self.retry_after_s = 1
        self._released = asyncio.Event()
        self._released.set()
        self.calls = 0
        self.peers: list[Any] = []
        self.refused_signatures = 0
        self.outage_answers = 0
        self.served: dict[str, tuple[int, dict[str, Any]]] = {}
        self.key_counts: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[Mapping[str, str]] = []
        self.callbacks_sent: list[tuple[int, dict[str, Any]]] = []
        self.listeners: dict[str, dict[str, Any]] = {}  # /hub registrations by id
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (definition, message) of every answer and notification
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.base_url = ""

    def hold(self) -> None:
        """Keep every call waiting before its answer until :meth:`release`."""
        self._released.clear()

    def release(self) -> None:
        """Answer the calls :meth:`hold` kept waiting, and the next ones at once."""
        self._released.set()

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

    @property
    def notifies(self) -> bool:
        """Whether results come later, by notification: ``answer_later``, or a ``callback_url``."""
        return bool(self.answer_later or self.callback_url)

    # ---- serving -------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(self.routes())
        app.add_routes(
            [web.post(f"{self.prefix}/hub", self.register), web.delete(f"{self.prefix}/hub/{{id}}", self.unregister)]
        )
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

    def _verified(self, raw: str, request: web.Request) -> Any:
        """The JSON body of a correctly signed call (``{}`` when empty), else ``None``; a signed
        body that is not JSON is ``400``."""
        try:
            self.webhook.verify(raw, dict(request.headers), json_parse=False)
        except WebhookVerificationError:
            self.refused_signatures += 1
            return None
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps({"code": "400", "reason": "the body is not JSON"}), content_type="application/json"
            ) from None

    def answer_json(self, definition: str, body: dict[str, Any], status: int) -> web.Response:
        self.sent.append((definition, body))
        return web.json_response(body, status=status)

    async def register(self, request: web.Request) -> web.Response:
        """``POST /hub``: an ``EventSubscriptionInput`` (``callback`` required), signed."""
        body = self._verified(await request.text(), request)
        if body is None:
            return _error(401, "bad signature")
        if not isinstance(body, dict) or not isinstance(body.get("callback"), str) or not body["callback"]:
            return _error(400, "callback is required")
        sub = {"id": uuid.uuid4().hex[:12], "callback": body["callback"]}
        if isinstance(body.get("query"), str):
            sub["query"] = body["query"]
        self.listeners[sub["id"]] = sub
        return self.answer_json("EventSubscription", sub, 201)

    async def unregister(self, request: web.Request) -> web.Response:
        """``DELETE /hub/{id}``: ``204``, or ``404`` for a registration it does not hold."""
        if self._verified(await request.text(), request) is None:
            return _error(401, "bad signature")
        if self.listeners.pop(request.match_info["id"], None) is None:
            return _error(404, "no such listener")
        return web.Response(status=204)

    async def handle(self, request: web.Request, answer: Any) -> web.Response:
        """Verify, apply outages and idempotency, wait the latency, then ``answer(body, key)``
        (which returns ``(status, definition, body)``)."""
        self.calls += 1
        # the caller's address: calls over one kept-alive connection come from the same port
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        raw = await request.text()
        body = self._verified(raw, request)
        if body is None:
            return _error(401, "bad signature")
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return _error(400, "Idempotency-Key is required")
        if self.down:
            self.outage_answers += 1
            return _error(503, "down for maintenance", **{"Retry-After": str(self.retry_after_s)})
        self.key_counts[key] += 1
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if key in self.served:
            status, previous = self.served[key]
            return web.json_response(previous, status=status)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        await self._released.wait()
        status, definition, result = answer(body, key)
        self.served[key] = (status, result)
        return self.answer_json(definition, result, status)

    def later(self, *notifications: dict[str, Any]) -> None:
        """Send ``notifications``, in order, each ``callback_delay_ms`` after the one before,
        to ``callback_url`` and to every registered listener's ``{callback}/listener/{name}``,
        signed.

        Like a Standard Webhooks sender, a non-2xx answer is retried (same ``webhook-id``,
        a fresh signature) after 0.1, 0.2, 0.4 ... s, five times at most: the hub may not have
        written down our synchronous answer yet when the notification arrives.
        """
        targets = [self.callback_url] if self.callback_url else []
        for sub in self.listeners.values():
            targets.append(sub["callback"].rstrip("/") + "/listener/")
        if not targets:
            return

        async def deliver(session: aiohttp.ClientSession, url: str, note: dict[str, Any]) -> None:
            msg_id = f"msg_{uuid.uuid4().hex}"
            text = json.dumps(note)
            for attempt in range(6):
                headers = sign_headers(self.secret, text, msg_id)
                try:
                    async with session.post(url, data=text, headers=headers) as resp:
                        self.callbacks_sent.append((resp.status, note))
                        if resp.status < 300:
                            return
                except aiohttp.ClientError:  # the hub is away (stopping, restarting): try again
                    self.callbacks_sent.append((0, note))
                await asyncio.sleep(0.1 * 2**attempt)

        async def send() -> None:
            async with aiohttp.ClientSession() as session:
                for note in notifications:
                    await asyncio.sleep(self.callback_delay_s)
                    self.sent.append((note["eventType"], note))
                    name = note["eventType"][0].lower() + note["eventType"][1:]
                    for target in targets:
                        await deliver(session, target + name if target.endswith("/listener/") else target, note)

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
    """A field-service firm's TMF646 Appointment Management v4.0.0 API.

    Technicians visit in three-hour slots, 09:00 and 13:00 UTC on working days, ``technicians``
    visits per slot. A booking takes the first free slot inside the requested ``validFor``
    (``failed`` if none fits); with ``answer_later`` it is ``initialized`` at once and
    ``confirmed`` by an ``AppointmentStateChangeEvent``. :meth:`delete` withdraws a booking
    (``AppointmentDeleteEvent``) and :meth:`set_status` changes its status
    (``AppointmentStateChangeEvent``); with ``refuse`` set every booking is ``409``.
    """

    prefix = "/tmf-api/appointment/v4"

    def __init__(self, secret: str, *, technicians: int = 1, **kw: Any) -> None:
        super().__init__(secret, **kw)
        self.technicians = technicians
        self.refuse = False  # answer 409 Conflict to every booking: the firm takes no more work
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
        def answer(body: dict[str, Any], _key: str) -> tuple[int, str, dict[str, Any]]:
            wanted = (body.get("requestedTimeSlot") or [{}])[0]
            start = _parse((wanted.get("validFor") or {}).get("startDateTime"))
            end = _parse((wanted.get("validFor") or {}).get("endDateTime"))
            if start is None or end is None:
                return 400, "Error", {"code": "400", "reason": "requestedTimeSlot.validFor is required"}
            free = [
                {
                    "id": f"slot-{int(s.timestamp())}",
                    "validFor": {"startDateTime": _iso(s), "endDateTime": _iso(s + timedelta(hours=3))},
                }
                for s in self.slots(start, end)
            ]
            search_id = uuid.uuid4().hex[:12]
            return (
                201,
                "SearchTimeSlot",
                {
                    "id": search_id,
                    "href": f"{self.prefix}/searchTimeSlot/{search_id}",
                    "@type": "SearchTimeSlot",
                    "searchDate": _iso(datetime.now(tz=UTC)),
                    "status": "done",
                    "requestedTimeSlot": body["requestedTimeSlot"],
                    "availableTimeSlot": free,
                },
            )

        return await self.handle(request, answer)

    async def create_appointment(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any], key: str) -> tuple[int, str, dict[str, Any]]:
            if body.get("@type") != "Appointment":
                return 400, "Error", {"code": "400", "reason": "@type must be Appointment"}
            if self.refuse:
                return 409, "Error", {"code": "409", "reason": "no technician can take this visit"}
            period = body.get("validFor") or {}
            start, end = _parse(period.get("startDateTime")), _parse(period.get("endDateTime"))
            if start is None or end is None:
                return 400, "Error", {"code": "400", "reason": "validFor.startDateTime and endDateTime are required"}
            free = self.slots(start, end, limit=1)
            appt_id = f"appt-{len(self.appointments) + 1}"
            now = _iso(datetime.now(tz=UTC))
            appt = {**body, "id": appt_id, "href": f"{self.prefix}/appointment/{appt_id}", "creationDate": now,
                    "lastUpdate": now}  # fmt: skip
            if not free:
                appt["status"] = "failed"
            else:
                self.booked[free[0]] += 1
                appt["validFor"] = {"startDateTime": _iso(free[0]), "endDateTime": _iso(free[0] + timedelta(hours=3))}
                appt["status"] = "initialized" if self.notifies else "confirmed"
            self.appointments[appt_id] = appt
            if self.notifies and free:
                self.set_status(appt_id, "confirmed")
            return 201, "Appointment", appt

        return await self.handle(request, answer)

    def set_status(self, appt_id: str, status: str) -> None:
        """Change a booking's status and tell the listeners (``AppointmentStateChangeEvent``)."""
        appt = {**self.appointments[appt_id], "status": status, "lastUpdate": _iso(datetime.now(tz=UTC))}
        self.appointments[appt_id] = appt
        self.later(notification("AppointmentStateChangeEvent", "appointment", appt))

    def delete(self, appt_id: str) -> None:
        """Withdraw a booking and tell the listeners (``AppointmentDeleteEvent``)."""
        appt = self.appointments.pop(appt_id)
        self.later(notification("AppointmentDeleteEvent", "appointment", appt))

    async def get_appointment(self, request: web.Request) -> web.Response:
        appt = self.appointments.get(request.match_info["id"])
        if appt is None:
            return _error(404, "no such appointment")
        return web.json_response(appt)


class StockSimulator(PartnerSimulator):
    """A supplier's TMF687 Stock Management v4.0.0 API over ``stock`` (part id -> units held).

    ``checkProductStock`` and ``reserveProductStock`` answer ``200`` ``done`` at once, or
    with ``answer_later``, ``201`` ``accepted`` and then the task's later states by
    ``*StateChangeEvent``: ``inProgress``, then ``done`` (or ``terminatedWithError`` while
    ``terminate`` is set).
    """

    prefix = "/tmf-api/stock/v4"

    def __init__(self, secret: str, stock: Mapping[str, int] | None = None, **kw: Any) -> None:
        super().__init__(secret, **kw)
        self.stock = dict(stock or {})
        self.reserved: Counter[str] = Counter()
        self.terminate = False

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{self.prefix}/checkProductStock", self.check_product_stock),
            web.post(f"{self.prefix}/reserveProductStock", self.reserve_product_stock),
        ]

    def _held(self, part: str) -> int:
        return self.stock.get(part, 0) - self.reserved[part]

    def _checked(self, item: Mapping[str, Any]) -> dict[str, Any]:
        part = ((item.get("checkedProductStock") or {}).get("stockedProduct") or {}).get("id")
        wanted = (item.get("requestedQuantity") or {}).get("amount") or 1
        held = self._held(str(part))
        result = "available" if held >= wanted else "partial" if held > 0 else "unavailable"
        stock = {
            **(item.get("checkedProductStock") or {}),
            "productStockLevel": {"amount": max(held, 0), "units": "unit"},
        }
        return {**item, "checkedProductStock": stock, "availabilityResult": result, "state": "done"}

    def _reserved(self, item: Mapping[str, Any]) -> dict[str, Any]:
        part = str((item.get("requestedProduct") or {}).get("id"))
        amount = (item.get("quantityRequested") or {}).get("amount") or 1
        ok = self._held(part) >= amount
        if ok:
            self.reserved[part] += amount
        return {
            **item,
            "quantityReserved": {"amount": amount if ok else 0, "units": "unit"},
            "reserveProductStockState": "done" if ok else "terminatedWithError",
        }

    def _task(self, kind: str, body: dict[str, Any], state_key: str, finish: Any) -> tuple[int, str, dict[str, Any]]:
        """Answer a task at once (``200 done``), or accept it and notify its later states."""
        task_id = uuid.uuid4().hex[:12]
        key = kind[0].lower() + kind[1:]
        task = {**body, "id": task_id, "href": f"{self.prefix}/{key}/{task_id}"}
        task["creationDate"] = _iso(datetime.now(tz=UTC))
        if not self.notifies:
            return 200, kind, {**finish(task), state_key: "done"}
        end = {**task, state_key: "terminatedWithError"} if self.terminate else {**finish(task), state_key: "done"}
        self.later(
            notification(f"{kind}StateChangeEvent", key, {**task, state_key: "inProgress"}),
            notification(f"{kind}StateChangeEvent", key, end),
        )
        return 201, kind, {**task, state_key: "accepted"}

    async def check_product_stock(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any], _key: str) -> tuple[int, str, dict[str, Any]]:
            items = body.get("checkProductStockItem")
            if body.get("@type") != "CheckProductStock" or not isinstance(items, list):
                return (
                    400,
                    "Error",
                    {"code": "400", "reason": "a CheckProductStock with checkProductStockItem is required"},
                )
            for item in items:
                stock = item.get("checkedProductStock") or {}
                if not (item.get("id") and item.get("requestedQuantity") and "stockedProduct" in stock
                        and "productStockLevel" in stock):  # fmt: skip
                    return _bad("an item needs id, requestedQuantity, checkedProductStock.productStockLevel")

            def finish(task: dict[str, Any]) -> dict[str, Any]:
                return {**task, "checkProductStockItem": [self._checked(i) for i in items]}

            return self._task("CheckProductStock", body, "state", finish)

        return await self.handle(request, answer)

    async def reserve_product_stock(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any], _key: str) -> tuple[int, str, dict[str, Any]]:
            items = body.get("reserveProductStockItem")
            if body.get("@type") != "ReserveProductStock" or not isinstance(items, list):
                return (
                    400,
                    "Error",
                    {"code": "400", "reason": "a ReserveProductStock with reserveProductStockItem is required"},
                )
            for item in items:
                if not (item.get("id") and item.get("quantityRequested") and item.get("requestedProduct")):
                    return (
                        400,
                        "Error",
                        {"code": "400", "reason": "each item needs id, quantityRequested and requestedProduct"},
                    )

            def finish(task: dict[str, Any]) -> dict[str, Any]:
                return {**task, "reserveProductStockItem": [self._reserved(i) for i in items]}

            return self._task("ReserveProductStock", body, "reserveProductStockState", finish)

        return await self.handle(request, answer)
