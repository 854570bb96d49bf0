"""Screen pops: the caller's 360 view pushed to the agent a call is offered to.

One :class:`ScreenPops` broker lives as long as its hub (the call center's ``prm_hub_started``
starts it) and is registered on the hub's plugin manager, where it hears ``prm_event_recorded``.
Ingest never waits for it:

- the hook only puts the call on a bounded queue (when it is full the oldest call waiting is
  dropped and counted in ``dropped_calls``);
- a few workers build each pop from the hub's view (within the touch point's budget) and hand
  it to the agent's channel;
- a channel keeps the agent's last ``ring_size`` pops (for resume) and gives each connection
  a bounded queue of its own: a slow or vanished browser loses its oldest pops
  (``dropped_pops``), never slows the others. A reconnecting client asks for what it missed
  with ``?since=<seq>``.

On PostgreSQL, where several hub processes may share the database, the recording process does
not build the pop: it publishes a notice on :mod:`prm_callcenter.bus` (LISTEN/NOTIFY) and
every process with that agent's channel builds and pushes it, so an agent connected to any
process gets the pops of calls recorded by all of them.

An erasure (``prm_customer_erased``) drops every pop, queued pop and waiting call about the
person from memory, in every process (through the same bus): a reconnecting agent's
``?since=`` replays nothing of them.

Sequence numbers start at the broker's start time in microseconds and count up, so they keep
increasing across restarts of the hub and a ``since`` from before a restart stays meaningful
(the ring itself is in memory: pops made before a restart are not replayed).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog
from attrs import define, field

from prm_core.plugin import (
    CORE_LABELS,
    ConfigError,
    CustomerView,
    Event,
    Fulfillment,
    Hub,
    RecordedEvent,
    hookimpl,
    summarize,
)

from .bus import PostgresBus
from .cti import OFFERED, TOUCHPOINT
from .signin import AgentSessions

__all__ = ["PLUGIN_NAME", "Connection", "ScreenPops", "screen_pop_customer", "screenpop_settings"]

PLUGIN_NAME = "prm_callcenter.screenpops"
log = structlog.get_logger(__name__)
RECENT_CONTACTS = 3
TIMELINE_PAGE = 50
MAX_TICKETS = 10_000


def screen_pop_customer(view: CustomerView, labels: Mapping[str, str] = CORE_LABELS) -> dict[str, Any]:
    """The view JSON plus what an agent reads in the first seconds of a call.

    - ``recent_contacts``: the caller's latest dialogues at other touch points (the IVR path
      before the transfer, a web request), each with its events oldest first and a
      ``headline``: the most telling event in words (``reported a problem: washer leaks``);
    - ``open_service_requests``: open dialogues of intent ``service`` at other touch points,
      each with ``issue``, ``product`` and the booked window (``window_start``/``window_end``)
      of a partner's work on it, and a ``summary`` in words;
    - every timeline and contact event gets a ``summary`` (:func:`prm_core.labels.summarize`);
    - ``offers``: the view's, else the offers made lately and not answered yet;
    - ``fulfillments``: ``[]`` unless a plugin enriches the view with it.
    """
    body = view.to_json()
    body.setdefault("fulfillments", [])
    for item in body["timeline"]:
        item["summary"] = summarize(item, labels)
    events_by_dialogue: dict[str, list[Mapping[str, Any]]] = {}
    for item in body["timeline"]:
        events_by_dialogue.setdefault(str(item.get("dialogue")), []).append(item)
    recent = []
    for dialogue in body["dialogues"]:
        if dialogue["touchpoint"] == TOUCHPOINT:
            continue
        steps = list(reversed(events_by_dialogue.get(dialogue["id"], [])))
        recent.append({**dialogue, "events": steps, "headline": _headline(steps, labels)})
        if len(recent) == RECENT_CONTACTS:
            break
    body["recent_contacts"] = recent
    # service requests still open anywhere (a web portal request waiting for a technician)
    body["open_service_requests"] = [
        _service_request(d, list(reversed(events_by_dialogue.get(d["id"], []))), body["fulfillments"])
        for d in body["dialogues"]
        if d["intent"] == "service" and d["status"] == "open" and d["touchpoint"] != TOUCHPOINT
    ]
    if not body.get("offers"):
        body["offers"] = _open_offers(body["timeline"])
    return body


def _headline(steps: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> str:
    """The contact in one line: its first event that carries a detail, else its first event."""
    for step in steps:
        line = summarize(step, labels)
        if ":" in line:
            return line
    return summarize(steps[0], labels) if steps else ""


def _service_request(
    dialogue: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], fulfillments: Sequence[Any]
) -> dict[str, Any]:
    """A request as an agent says it: the product, the issue, the booked window."""
    data: dict[str, Any] = {}
    for step in steps:  # oldest first: a later event (a photo, an update) fills what is missing
        for key, value in (step.get("data") or {}).items():
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                data.setdefault(key, value)
    issue = data.get("issue") or data.get("text") or data.get("reason")
    product = data.get("product_title") or data.get("product_name") or data.get("product_id")
    window: Mapping[str, Any] = {}
    for f in fulfillments:
        fd = f.get("data") if isinstance(f, Mapping) else None
        if isinstance(fd, Mapping) and fd.get("window_start") and f.get("dialogue_id") in (dialogue["id"], None):
            window = fd
            break
    words = str(issue) if issue else "service request"
    if product:
        words += f" ({product})"
    return {
        **dialogue,
        "events": list(steps),
        "issue": issue,
        "product": product,
        "window_start": window.get("window_start"),
        "window_end": window.get("window_end"),
        "summary": words,
    }


def _open_offers(timeline: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Offers made to the caller lately (newest first, one per code) that were not accepted or
    declined: what the agent can bring up."""
    answered: set[str] = set()
    found: dict[str, dict[str, Any]] = {}
    for item in timeline:  # newest first
        data = item.get("data") or {}
        code = data.get("offer") or data.get("offer_id") or data.get("code")
        if not isinstance(code, str):
            continue
        if item.get("type") in ("offer.accepted", "offer.declined"):
            answered.add(code)
        elif item.get("type") == "offer.made" and code not in answered and code not in found:
            found[code] = {"code": code, "title": str(data.get("title") or code), "made_at": item.get("occurred_at")}
    return list(found.values())[:3]


_TUNING = {
    "ring_size": (int, 50),
    "connection_queue": (int, 20),
    "pending_calls": (int, 1000),
    "workers": (int, 4),
    "ticket_ttl_s": (float, 30.0),
    "heartbeat_s": (float, 20.0),
}


def screenpop_settings(settings: Any) -> dict[str, Any]:
    """``[touchpoints.callcenter.screenpop]``: each number positive, or a ConfigError naming it."""
    tuning: Any = settings.get("screenpop", {})
    if not isinstance(tuning, Mapping):
        raise ConfigError("[touchpoints.callcenter.screenpop] must be a table")
    values: dict[str, Any] = {}
    for key, (kind, default) in _TUNING.items():
        value = tuning.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"[touchpoints.callcenter.screenpop].{key} must be a positive number, got {value!r}")
        values[key] = kind(value)
    return values


def _customer_of(text: str) -> str | None:
    """The customer a kept pop (or partner news) is about: every message names it."""
    try:
        found = json.loads(text).get("customer_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


@define(eq=False)
class Connection:
    """One WebSocket of an agent: a bounded queue of pops waiting to be sent."""

    limit: int
    queue: deque[str] = field(factory=deque)
    dropped: int = 0
    ready: asyncio.Event = field(factory=asyncio.Event)

    def offer(self, text: str) -> bool:
        """Queue a pop; ``False`` when the oldest waiting one had to go to make room."""
        kept = True
        if len(self.queue) >= self.limit:
            self.queue.popleft()
            self.dropped += 1
            kept = False
        self.queue.append(text)
        self.ready.set()
        return kept

    async def next(self, idle_s: float) -> str | None:
        """The next pop to send, or ``None`` after ``idle_s`` seconds of nothing."""
        if not self.queue:
            self.ready.clear()
            try:
                async with asyncio.timeout(idle_s):
                    await self.ready.wait()
            except TimeoutError:
                return None
        return self.queue.popleft() if self.queue else None


@define(eq=False)
class AgentChannel:
    """An agent's recent pops (for resume) and open connections."""

    ring: deque[tuple[int, str]]
    connections: set[Connection] = field(factory=set)


@define(eq=False)
class ScreenPops:
    """The per-hub broker of screen pops (see the module's docstring)."""

    hub: Hub
    budget_ms: int = 1000
    ring_size: int = 50
    connection_queue: int = 20
    pending_calls: int = 1000
    workers: int = 4
    agents: dict[str, AgentChannel] = field(factory=dict)
    dropped_calls: int = 0
    dropped_pops: int = 0
    sent: int = 0
    _seq: int = field(factory=lambda: time.time_ns() // 1000)
    _calls: deque[tuple[RecordedEvent, str]] = field(factory=deque)
    _wake: asyncio.Event = field(factory=asyncio.Event)
    ticket_ttl_s: float = 30.0
    # agents' sign-in codes and sessions (prm_callcenter.signin)
    sessions: AgentSessions = field(factory=AgentSessions)
    _tasks: list[asyncio.Task[None]] = field(factory=list)
    _tickets: dict[str, tuple[str, float]] = field(factory=dict)
    bus: PostgresBus | None = None
    # which agents were shown which customer lately (bounded): where partner news goes
    showing: OrderedDict[str, set[str]] = field(factory=OrderedDict)
    showing_limit: int = 1000
    # which calls were offered or transferred to which agent lately (bounded): the calls an
    # agent's session may write notes and outcomes for
    offered: OrderedDict[tuple[str, str], None] = field(factory=OrderedDict)
    # customers erased lately (bounded, like showing): a pop whose view was read before the
    # erasure committed is not sent
    _erased: OrderedDict[str, None] = field(factory=OrderedDict)

    # ---- lifetime -----------------------------------------------------------------------

    async def start(self, *, shared: bool | None = None) -> None:
        """Start the workers; with ``shared`` (default: on PostgreSQL) also the bus between processes."""
        if shared is None:
            shared = self.hub.store.dialect == "postgresql"
        if shared:
            self.bus = PostgresBus(self.hub.store.connect, self._heard, pending=self.pending_calls)
            await self.bus.start()
        self._tasks = [asyncio.create_task(self._work(), name=f"screenpop-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for channel in self.agents.values():
            for conn in channel.connections:
                conn.ready.set()  # wake the sender so it sees the hub stopping

    # ---- ingest side: never waits -------------------------------------------------------

    @hookimpl
    def prm_event_recorded(self, recorded: RecordedEvent) -> None:
        event = recorded.event
        if event.touchpoint != TOUCHPOINT:
            return
        agent = None
        if event.type == OFFERED:
            agent = event.data.get("agent_id")
        elif event.type == "call.transferred":
            agent = event.data.get("to_agent_id")
        if not isinstance(agent, str) or not agent:
            return
        if self.bus is not None:
            data = event.data
            self.bus.publish(
                {
                    "agent": agent,
                    "customer_id": recorded.customer_id,
                    "dialogue_id": recorded.dialogue_id,
                    "id": event.id,
                    "type": event.type,
                    "occurred_at": event.occurred_at.isoformat(),
                    # what the pop shows of the call; the caller's number stays in the database
                    "data": {k: data[k] for k in ("call_id", "queue", "to_queue", "dnis") if k in data},
                }
            )
            return
        self._enqueue(recorded, agent)

    def _heard(self, notice: Mapping[str, Any]) -> None:
        """A notice from the bus (any process): pop it here if this agent has a channel here."""
        if notice.get("kind") == "erased":
            ids = notice.get("customer_ids")
            if isinstance(ids, list):
                self.forget([i for i in ids if isinstance(i, str)])
            return
        if notice.get("kind") == "fulfillment":
            customer, body = notice.get("customer_id"), notice.get("fulfillment")
            if isinstance(customer, str) and isinstance(body, Mapping):
                self._fulfillment(customer, body)
            return
        agent = notice.get("agent")
        if not isinstance(agent, str) or agent not in self.agents:
            return
        try:
            event = Event(
                id=str(notice["id"]),
                type=str(notice["type"]),
                occurred_at=datetime.fromisoformat(str(notice["occurred_at"])),
                touchpoint=TOUCHPOINT,
                data=dict(notice.get("data") or {}),
            )
            recorded = RecordedEvent(event, str(notice["customer_id"]), str(notice["dialogue_id"]))
        except (KeyError, ValueError, TypeError):
            log.warning("malformed screen-pop notice ignored")
            return
        self._enqueue(recorded, agent)

    def _enqueue(self, recorded: RecordedEvent, agent: str) -> None:
        if len(self._calls) >= self.pending_calls:
            self._calls.popleft()
            self.dropped_calls += 1
        self._calls.append((recorded, agent))
        self._wake.set()

    # ---- building pops ------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            if not self._calls:
                self._wake.clear()
                await self._wake.wait()
                continue
            recorded, agent = self._calls.popleft()
            try:
                await self._pop(recorded, agent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one call's view failing must not stop the worker
                log.error("screen pop failed", call_event=recorded.event.id, error=type(exc).__name__)

    async def _pop(self, recorded: RecordedEvent, agent: str) -> None:
        deadline = time.monotonic() + self.budget_ms / 1000
        view, left_out = await self.hub.view_until(recorded.customer_id, deadline, limit=TIMELINE_PAGE)
        if recorded.customer_id in self._erased:
            return  # erased while the view was read: that view may predate the erasure
        data = recorded.event.data
        self._seq += 1
        message = {
            "type": "screen_pop",
            "seq": self._seq,
            "call_id": data.get("call_id"),
            "agent_id": agent,
            "event": recorded.event.type,
            "queue": data.get("to_queue") or data.get("queue"),
            "dnis": data.get("dnis"),
            "offered_at": recorded.event.occurred_at.isoformat().replace("+00:00", "Z"),
            "customer_id": recorded.customer_id,
            "dialogue_id": recorded.dialogue_id,
            "degraded": left_out,
            "customer": screen_pop_customer(view, self.hub.event_labels),
        }
        self.publish(agent, self._seq, json.dumps(message, default=str, separators=(",", ":")))
        self._shown(recorded.customer_id, agent)
        if isinstance(data.get("call_id"), str):
            self.offered[(agent, data["call_id"])] = None
            while len(self.offered) > self.pending_calls:
                self.offered.popitem(last=False)

    def was_offered(self, agent: str, call_id: str) -> bool:
        """Whether ``call_id`` was offered or transferred to ``agent`` lately (in this process's
        memory, as sign-in sessions are)."""
        return (agent, call_id) in self.offered

    def _shown(self, customer_id: str, agent: str) -> None:
        self.showing.setdefault(customer_id, set()).add(agent)
        self.showing.move_to_end(customer_id)
        while len(self.showing) > self.showing_limit:
            self.showing.popitem(last=False)

    # ---- erasure: nothing about the person stays in memory ------------------------------

    @hookimpl
    def prm_customer_erased(self, customer_id: str, merged_ids: Sequence[str]) -> None:
        """Forget the erased customer's pops here and, on PostgreSQL, in every hub process."""
        ids = [customer_id, *merged_ids]
        self.forget(ids)
        if self.bus is not None:
            self.bus.publish({"kind": "erased", "customer_ids": ids})

    def forget(self, customer_ids: Sequence[str]) -> int:
        """Drop every pop, queued call and "showing" entry about these customers (the replay
        ring, each connection's queue, the calls waiting for a worker); the number of pops
        dropped. Harmless to repeat."""
        ids = set(customer_ids)
        if not ids:
            return 0
        for cid in ids:
            self._erased[cid] = None
            self._erased.move_to_end(cid)
            self.showing.pop(cid, None)
        while len(self._erased) > self.showing_limit:
            self._erased.popitem(last=False)
        self._calls = deque((r, a) for r, a in self._calls if r.customer_id not in ids)
        dropped = 0
        for channel in self.agents.values():
            kept = [(seq, text) for seq, text in channel.ring if _customer_of(text) not in ids]
            dropped += len(channel.ring) - len(kept)
            channel.ring = deque(kept, maxlen=channel.ring.maxlen)
            for conn in channel.connections:
                waiting = [text for text in conn.queue if _customer_of(text) not in ids]
                dropped += len(conn.queue) - len(waiting)
                conn.queue = deque(waiting)
        return dropped

    # ---- partner news on the agent's screen -------------------------------------------

    @hookimpl
    def prm_fulfillment_updated(self, fulfillment: Fulfillment) -> None:
        """A partner answered (a technician booked, parts found) after the pop: tell the agents
        showing that customer. On PostgreSQL through the bus, since the answer may arrive at any
        hub process."""
        body = fulfillment.to_json()
        if self.bus is not None:
            notice: dict[str, Any] = {
                "kind": "fulfillment",
                "customer_id": fulfillment.customer_id,
                "fulfillment": body,
            }
            if len(json.dumps(notice, default=str)) > 7000:  # NOTIFY's payload limit is 8000 bytes
                notice["fulfillment"] = {k: body[k] for k in ("id", "partner", "role", "action", "status")}
            self.bus.publish(notice)
            return
        self._fulfillment(fulfillment.customer_id, body)

    def _fulfillment(self, customer_id: str, body: Mapping[str, Any]) -> None:
        for agent in sorted(self.showing.get(customer_id, ())):
            self._seq += 1
            message = {"type": "fulfillment_updated", "seq": self._seq, "customer_id": customer_id, "fulfillment": body}
            self.publish(agent, self._seq, json.dumps(message, default=str, separators=(",", ":")))

    def channel(self, agent: str) -> AgentChannel:
        channel = self.agents.get(agent)
        if channel is None:
            channel = self.agents[agent] = AgentChannel(ring=deque(maxlen=self.ring_size))
        return channel

    def publish(self, agent: str, seq: int, text: str) -> None:
        """Keep a pop for resume and hand it to every connection of the agent."""
        channel = self.channel(agent)
        channel.ring.append((seq, text))
        for conn in channel.connections:
            if not conn.offer(text):
                self.dropped_pops += 1
            self.sent += 1

    # ---- agent side ---------------------------------------------------------------------

    def connect(self, agent: str, since: int | None) -> Connection:
        """A new connection of ``agent``, primed with the pops after ``since`` still kept."""
        channel = self.channel(agent)
        conn = Connection(limit=self.connection_queue)
        if since is not None:
            for seq, text in channel.ring:
                if seq > since:
                    conn.offer(text)
        channel.connections.add(conn)
        return conn

    def disconnect(self, agent: str, conn: Connection) -> None:
        channel = self.agents.get(agent)
        if channel is not None:
            channel.connections.discard(conn)

    def issue_ticket(self, agent: str) -> str:
        """A one-time ticket that opens ``agent``'s WebSocket within ``ticket_ttl_s`` seconds
        (browsers cannot set an Authorization header on a WebSocket)."""
        now = time.monotonic()
        for ticket, (_, expires) in list(self._tickets.items()):
            if expires < now:
                del self._tickets[ticket]
        if len(self._tickets) >= MAX_TICKETS:
            raise OverflowError("too many unused tickets")
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = (agent, now + self.ticket_ttl_s)
        return ticket

    def redeem(self, ticket: str, agent: str) -> bool:
        """Whether ``ticket`` is a live ticket for ``agent``; a ticket works once."""
        found = self._tickets.pop(ticket, None)
        return found is not None and found[0] == agent and found[1] >= time.monotonic()

    @property
    def last_seq(self) -> int:
        return self._seq

    def stats(self) -> dict[str, int]:
        return {
            "agents": len(self.agents),
            "connections": sum(len(c.connections) for c in self.agents.values()),
            "pending_calls": len(self._calls),
            "sent": self.sent,
            "dropped_calls": self.dropped_calls,
            "dropped_pops": self.dropped_pops,
            "bus_dropped": self.bus.dropped if self.bus is not None else 0,
        }
