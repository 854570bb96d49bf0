"""The IVR engine: given the menu, the caller and the input, what to say or ask next.

Pure and synchronous: it knows nothing of Twilio, Asterisk or the store. Each call of
:meth:`Engine.start` or :meth:`Engine.answer` gives one :class:`Turn`, which the adapters
render (TwiML, AGI commands) and :mod:`prm_ivr.calls` records as an ``ivr.menu`` event, so
a retried webhook can be answered with exactly the turn it got the first time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from attrs import asdict, frozen

from .menu import Menu, Node

__all__ = ["STANDARD", "Appointment", "Caller", "Engine", "Gather", "Turn", "speak_window"]

Outcome = Literal["self_served", "transferred", "abandoned"]


@frozen
class Appointment:
    """A scheduled technician visit (from the view's ``fulfillments``)."""

    window_start: datetime
    window_end: datetime


@frozen
class Caller:
    """What personalizes the menu for one caller; :data:`STANDARD` when nothing is known."""

    known: bool = False
    first_name: str | None = None
    tier: str | None = None
    appointment: Appointment | None = None
    degraded: tuple[str, ...] = ()


STANDARD = Caller()


@frozen
class Gather:
    """Wait for input at menu ``node`` (attempt ``attempt``): DTMF ``keys`` or spoken ``words``."""

    node: str
    attempt: int
    keys: tuple[str, ...]
    words: tuple[str, ...]
    timeout_s: int


@frozen
class Turn:
    """One turn of the dialogue: statements, then a question (``gather``), a transfer or an end.

    ``say`` is spoken first, then ``prompt`` while listening (``gather``). ``transfer`` names
    the queue the caller goes to; ``outcome`` is set when the IVR part of the call ends.
    ``personalized`` names what the caller's profile changed (``greeting``, ``priority``,
    ``appointment``); ``chose`` is the option the input selected.
    """

    node: str
    say: tuple[str, ...] = ()
    prompt: tuple[str, ...] = ()
    gather: Gather | None = None
    transfer: str | None = None
    outcome: Outcome | None = None
    personalized: tuple[str, ...] = ()
    chose: str | None = None
    degraded: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        """JSON for the ``ivr.menu`` event's data."""
        return asdict(self, recurse=True, value_serializer=lambda _i, _a, v: list(v) if isinstance(v, tuple) else v)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Turn:
        """The turn a recorded ``ivr.menu`` event holds."""
        gather = data.get("gather")
        return cls(
            node=data["node"],
            say=tuple(data.get("say") or ()),
            prompt=tuple(data.get("prompt") or ()),
            gather=Gather(
                node=gather["node"],
                attempt=gather["attempt"],
                keys=tuple(gather["keys"]),
                words=tuple(gather["words"]),
                timeout_s=gather["timeout_s"],
            )
            if gather
            else None,
            transfer=data.get("transfer"),
            outcome=data.get("outcome"),
            personalized=tuple(data.get("personalized") or ()),
            chose=data.get("chose"),
            degraded=tuple(data.get("degraded") or ()),
        )


def speak_window(appointment: Appointment) -> str:
    """``between 9:00 AM and 11:00 AM on Tuesday, November 24``, in the window's own offset
    (the partner states it in the customer's local time)."""

    def clock(t: datetime) -> str:
        return t.strftime("%I:%M %p").lstrip("0")

    start, end = appointment.window_start, appointment.window_end
    day = f"{start.strftime('%A, %B')} {start.day}"
    if start.date() == end.date():
        return f"between {clock(start)} and {clock(end)} on {day}"
    return f"from {clock(start)} on {day} to {clock(end)} on {end.strftime('%A, %B')} {end.day}"


_WORD = re.compile(r"[a-z0-9']+")


class Engine:
    """Walks a :class:`~prm_ivr.menu.Menu` for one caller at a time."""

    def __init__(self, menu: Menu) -> None:
        self.menu = menu

    def _priority(self, caller: Caller) -> bool:
        p = self.menu.priority
        return p is not None and caller.tier is not None and caller.tier in p.tiers

    def start(self, caller: Caller) -> Turn:
        """The first turn: welcome (by first name for a known caller), the appointment
        window when a technician is scheduled, then the start menu."""
        m = self.menu.messages
        say = [m["welcome"]]
        personalized: list[str] = []
        if caller.first_name:
            say.append(m["welcome_known"].format(first_name=caller.first_name))
            personalized.append("greeting")
        if caller.appointment is not None:
            say.append(m["appointment"].format(window=speak_window(caller.appointment)))
            personalized.append("appointment")
        return self._enter(self.menu.start, caller, say, personalized, attempt=1)

    def answer(
        self,
        node_id: str | None,
        caller: Caller,
        *,
        digits: str | None = None,
        speech: str | None = None,
        attempt: int = 1,
    ) -> Turn:
        """The turn after input at menu ``node_id``: DTMF ``digits`` and/or recognized
        ``speech``; neither means the caller said nothing before the timeout."""
        node = self.menu.node(node_id)
        if node.kind != "menu":  # only menus listen; anything else restarts at the top
            node = self.menu.node(self.menu.start)
        m = self.menu.messages
        digits = (digits or "").strip()[:1] or None
        words = set(_WORD.findall((speech or "").lower()))
        if digits is None and not words:
            return self._retry(node, caller, m["no_input"], attempt)
        p = self.menu.priority
        if p is not None and self._priority(caller) and ((digits and digits == p.key) or words & set(p.words)):
            return self._transfer_to(node.id, p.queue, caller, [m["transferring"]], ["priority"], chose="priority")
        for option in node.options:
            if (digits is not None and digits == option.key) or (digits is None and words & set(option.words)):
                return self._enter(option.next, caller, [], [], attempt=1, chose=option.key or option.words[0])
        return self._retry(node, caller, m["not_understood"], attempt)

    def _retry(self, node: Node, caller: Caller, why: str, attempt: int) -> Turn:
        if attempt >= self.menu.max_attempts:
            # a caller the menu keeps failing gets a person, not a hang-up
            return self._transfer_to(
                node.id, self.menu.fallback_queue, caller, [why, self.menu.messages["transferring"]]
            )
        return self._enter(node.id, caller, [why], [], attempt=attempt + 1)

    def _transfer_to(
        self, node_id: str, queue: str, caller: Caller, say: list[str], personalized: list[str] | None = None,
        chose: str | None = None,
    ) -> Turn:  # fmt: skip
        return Turn(
            node=node_id, say=tuple(say), transfer=queue, outcome="transferred",
            personalized=tuple(personalized or ()), chose=chose, degraded=caller.degraded,
        )  # fmt: skip

    def _enter(
        self, node_id: str, caller: Caller, say: list[str], personalized: list[str], *, attempt: int,
        chose: str | None = None,
    ) -> Turn:  # fmt: skip
        """Arrive at ``node_id``: speak messages along the way until a menu, a transfer or an end."""
        node = self.menu.nodes[node_id]
        while node.kind == "message":
            say.append(node.say)
            if node.next is None:
                say.append(self.menu.messages["goodbye"])
                return Turn(node=node.id, say=tuple(say), outcome="self_served", personalized=tuple(personalized),
                            chose=chose, degraded=caller.degraded)  # fmt: skip
            node = self.menu.nodes[node.next]
        if node.kind == "transfer":
            say.append(node.say or self.menu.messages["transferring"])
            assert node.transfer is not None
            return Turn(node=node.id, say=tuple(say), transfer=node.transfer, outcome="transferred",
                        personalized=tuple(personalized), chose=chose, degraded=caller.degraded)  # fmt: skip
        prompt = []
        keys = [o.key for o in node.options if o.key]
        words = [w for o in node.options for w in o.words]
        p = self.menu.priority
        if p is not None and self._priority(caller):
            # the priority line is offered first, before the menu's own choices
            prompt.append(p.prompt)
            keys = [p.key, *keys] if p.key else keys
            words = [*p.words, *words]
            personalized.append("priority")
        prompt.append(node.prompt)
        return Turn(
            node=node.id,
            say=tuple(say),
            prompt=tuple(prompt),
            gather=Gather(node.id, attempt, tuple(keys), tuple(words), self.menu.timeout_s),
            personalized=tuple(personalized),
            chose=chose,
            degraded=caller.degraded,
        )
