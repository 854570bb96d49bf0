"""IVR calls as hub dialogues: every step an event at touch point ``ivr``.

The adapters (Twilio, FastAGI) turn their vendor's messages into calls of
:class:`IvrCalls`; it asks the hub for the caller's personalization (value delivery within
the IVR budget), lets the :class:`~prm_ivr.engine.Engine` decide the turn, and records it:

- ``ivr.call.started`` (a request turn: value delivery answers it), ``ivr.input`` (a request
  turn too), ``ivr.menu`` (outbound: what the caller heard, the whole :class:`Turn`),
  ``ivr.transferred`` (``data.queue``), ``ivr.ended`` (``data.outcome``: ``self_served``,
  ``transferred`` or ``abandoned``; it closes the dialogue);
- the dialogue key is the call id; every event carries the caller's phone (E.164), so a
  caller known from the web by the same number in another spelling is the same customer.

Event ids come from the call id and the adapter's request key (a digest of what Twilio
signed, the AGI turn number), so a retried or replayed request records nothing new and gets
the turn stored the first time. A call ends once: ``ivr.ended``'s id is the call's, and a
later hang-up after a transfer is a duplicate. A call that ended takes no more turns: a new
request for it is answered with :data:`ENDED` (hang up) and records nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from attrs import frozen

from prm_core.plugin import Answer, Event, Hub, Identity, utcnow

from .engine import Appointment, Caller, Engine, Outcome, Turn

__all__ = ["ENDED", "TOUCHPOINT", "Call", "IvrCalls", "appointment_of", "caller_from"]

TOUCHPOINT = "ivr"
# the answer to a request for a call that has ended: nothing to say, hang up
ENDED = Turn(node="ended")
log = structlog.get_logger(__name__)

# hub.request runs on after a late answer (its events must become durable); keep a reference
# so the task is not garbage-collected half-way
_running: set[asyncio.Task[Any]] = set()


@frozen
class Call:
    """One call as an adapter sees it: ``id`` (the dialogue key), the vendor (``source``) and
    the caller's number as the network gave it (``None`` when withheld)."""

    id: str
    source: str
    caller_number: str | None = None


def appointment_of(fulfillments: Any, now: datetime) -> Appointment | None:
    """The next field-service window among a view's ``fulfillments`` (newest first): one
    with ``data.window_start``/``window_end``, not rejected, failed or completed, not over."""
    if not isinstance(fulfillments, list | tuple):
        return None
    found: list[Appointment] = []
    for f in fulfillments:
        if not isinstance(f, Mapping) or f.get("status") in ("rejected", "failed", "completed"):
            continue
        data = f.get("data")
        if not isinstance(data, Mapping):
            continue
        try:
            start = datetime.fromisoformat(str(data["window_start"]))
            end = datetime.fromisoformat(str(data["window_end"]))
        except (KeyError, ValueError):
            continue
        if start.tzinfo is None or end.tzinfo is None or end < now:
            continue
        found.append(Appointment(start, end))
    return min(found, key=lambda a: a.window_start) if found else None


def caller_from(answer: Answer) -> Caller:
    """The personalization value delivery gave: the customer summary (first name, tier) and
    the ``ivr`` knowledge (the appointment); whatever was late is simply missing."""
    summary = answer.delivery.customer
    name = summary.get("name")
    first = name.split()[0] if isinstance(name, str) and name.strip() else None
    knowledge = answer.delivery.knowledge.get("ivr", {})
    appointment = None
    if isinstance(knowledge.get("appointment"), Mapping):
        a = knowledge["appointment"]
        appointment = Appointment(datetime.fromisoformat(a["window_start"]), datetime.fromisoformat(a["window_end"]))
    tier = summary.get("tier")
    return Caller(
        known=bool(first or tier or appointment),
        first_name=first,
        tier=tier if isinstance(tier, str) else None,
        appointment=appointment,
        degraded=tuple(answer.delivery.degraded),
    )


class IvrCalls:
    """Runs IVR turns for ``hub`` with ``engine``; shared by every IVR adapter."""

    def __init__(self, hub: Hub, engine: Engine) -> None:
        self.hub = hub
        self.engine = engine
        # the hub itself cuts value delivery at the budget; this guard is for a hub that cannot
        # even record in time (a stalled store): the caller then hears the standard menu
        self.limit_s = hub.touchpoint(TOUCHPOINT).budget_ms / 1000 * 1.5

    # ---- what adapters call ---------------------------------------------------------------

    async def start(self, call: Call, key: str, data: Mapping[str, Any] | None = None) -> Turn:
        """A call arrived: personalize, welcome, ask the start menu."""
        stored = await self._stored_turn(call, key)
        if stored is not None:
            return stored
        event = self._event(call, f"{call.source}:{call.id}:started", "ivr.call.started",
                            {"source": call.source, **(data or {})})  # fmt: skip
        caller = await self._personalize(event)
        return await self._record_turn(call, key, self.engine.start(caller))

    async def answer(
        self, call: Call, key: str, node: str | None, *, digits: str | None = None, speech: str | None = None,
        attempt: int = 1,
    ) -> Turn:  # fmt: skip
        """Input at menu ``node`` (or none before the timeout): the next turn."""
        stored = await self._stored_turn(call, key)
        if stored is not None:
            return stored
        data: dict[str, Any] = {"node": node, "attempt": attempt, "mode": "speech" if speech else "dtmf"}
        if digits:
            data["digits"] = digits[:32]
        if speech:
            data["speech"] = speech[:500]
        if not digits and not speech:
            data["mode"] = "none"
        caller = await self._personalize(self._event(call, f"{call.source}:{call.id}:{key}:input", "ivr.input", data))
        turn = self.engine.answer(node, caller, digits=digits, speech=speech, attempt=attempt)
        return await self._record_turn(call, key, turn)

    async def end(self, call: Call, outcome: Outcome, data: Mapping[str, Any] | None = None) -> bool:
        """Close the call's dialogue with ``outcome``; false when it had ended already."""
        (recorded,) = await self.hub.record([self._ended(call, outcome, data)])
        return not recorded.duplicate

    # ---- inside ---------------------------------------------------------------------------

    def _event(
        self, call: Call, event_id: str, event_type: str, data: Mapping[str, Any], *, direction: str = "inbound"
    ) -> Event:
        identities: tuple[Identity, ...] = ()
        if call.caller_number:
            try:
                phone = self.hub.registrations.namespaces["phone"].normalize(
                    call.caller_number, self.hub.config.default_region
                )
                identities = (Identity("phone", phone),)
            except ValueError:
                pass  # withheld or not a number ("anonymous", "client:alice"): an unknown caller
        return Event(
            id=event_id[:200],
            type=event_type,
            occurred_at=utcnow(),
            touchpoint=TOUCHPOINT,
            identities=identities,
            dialogue=call.id[:200],
            direction=direction,  # type: ignore[arg-type]
            data=dict(data),
        )

    def _ended(self, call: Call, outcome: Outcome, data: Mapping[str, Any] | None = None) -> Event:
        return self._event(call, f"{call.source}:{call.id}:ended", "ivr.ended", {"outcome": outcome, **(data or {})})

    async def _personalize(self, event: Event) -> Caller:
        """Value delivery for this turn, cut at the IVR budget: late means the standard menu."""
        task = asyncio.ensure_future(self.hub.request(event))
        _running.add(task)
        task.add_done_callback(_running.discard)
        try:
            answer = await asyncio.wait_for(asyncio.shield(task), timeout=self.limit_s)
        except TimeoutError:
            log.warning("ivr value delivery late; standard menu", event_type=event.type, limit_s=self.limit_s)
            return Caller(degraded=("ivr:late",))
        return caller_from(answer)

    async def _record_turn(self, call: Call, key: str, turn: Turn) -> Turn:
        """Record the turn (and a transfer or an end it brings); a concurrent retry that
        recorded first wins, and both answer with its turn."""
        menu = self._event(
            call, f"{call.source}:{call.id}:{key}:menu", "ivr.menu", turn.to_data(), direction="outbound"
        )
        batch = [menu]
        if turn.transfer is not None:
            batch.append(self._event(call, f"{call.source}:{call.id}:transferred", "ivr.transferred",
                                     {"queue": turn.transfer, "node": turn.node}, direction="outbound"))  # fmt: skip
        if turn.outcome is not None:
            batch.append(self._ended(call, turn.outcome, {"node": turn.node}))
        recorded = await self.hub.record(batch)
        if recorded[0].duplicate:
            stored = await self._stored_turn(call, key)
            return stored or turn
        return turn

    async def _stored_turn(self, call: Call, key: str) -> Turn | None:
        """The turn recorded for this request key before (a retry or a replay), :data:`ENDED`
        when the call has ended since, else ``None`` (a new turn)."""
        event_id = f"{call.source}:{call.id}:{key}:menu"[:200]
        ended_id = self._ended(call, "abandoned").id
        found = await self.hub.recorded(TOUCHPOINT, [event_id, ended_id])
        if event_id in found:
            return Turn.from_data(found[event_id].event.data)
        return ENDED if ended_id in found else None
