"""Domain values passed to and from hooks.

Everything here is a frozen attrs value: plugins receive these, never ORM rows, and
change one with :func:`attrs.evolve`. Registrations (touch points, partners, value
providers, identity namespaces) validate themselves on construction so that a bad
plugin fails at start, naming what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from attrs import field, frozen, validators

__all__ = [
    "CHANNELS",
    "Adapter",
    "Customer",
    "CustomerKind",
    "CustomerView",
    "Delivery",
    "Dialogue",
    "Direction",
    "Event",
    "FulfillmentRequest",
    "FulfillmentResult",
    "Identity",
    "IdentityNamespace",
    "Intent",
    "Membership",
    "Merge",
    "Offer",
    "Partner",
    "RecordedEvent",
    "TimelineEntry",
    "TouchPoint",
    "ValueProvider",
    "ValueRequest",
]

CustomerKind = Literal["person", "organization", "group"]
Direction = Literal["inbound", "outbound"]
Intent = Literal["information", "service", "sale"]

CHANNELS = frozenset({"web", "voice", "ivr", "store", "kiosk", "email", "sms", "chat", "partner", "other"})
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _check_name(instance: Any, attribute: Any, value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} must be lower-case letters, digits, '-' or '_' "
            f"starting with a letter (at most 63 characters), got {value!r}"
        )


def _frozen_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


def _identities(value: Iterable[Identity]) -> tuple[Identity, ...]:
    return tuple(value)


# Typed converters rather than bare ``tuple``/``frozenset``: attrs' mypy plugin takes a
# converter's parameter as the ``__init__`` parameter, and the builtins' is a bare
# ``Iterable[_T_co]`` that no argument matches, so a plugin's ``Adapter(routes=[...])``
# failed type-checking.
def _routes(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


def _services(value: Iterable[Callable[[Any], Any]]) -> tuple[Callable[[Any], Any], ...]:
    return tuple(value)


def _names(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):  # frozenset("call.ended") would be a set of its letters
        raise TypeError(f"expected a collection of names, got the string {value!r}")
    return frozenset(value)


@frozen
class Identity:
    """One normalized identifier of a customer, such as ``email:ann@example.com``.

    An identity belongs to exactly one customer (unless its namespace or value is
    marked shared, when it links without merging).
    """

    namespace: str
    value: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.value}"

    @classmethod
    def parse(cls, ref: str) -> Identity:
        """Split ``namespace:value`` (the value may itself contain colons)."""
        namespace, sep, value = ref.partition(":")
        if not sep or not namespace or not value:
            raise ValueError(f"an identity is written namespace:value, got {ref!r}")
        return cls(namespace, value)


@frozen
class IdentityNamespace:
    """A kind of identifier and how to normalize its values.

    ``normalize(raw, region)`` returns the canonical value or raises ``ValueError``
    with a message fit for an API error. ``shared`` namespaces (a kiosk device id)
    link identities without merging customers.
    """

    name: str = field(validator=_check_name)
    normalize: Callable[[str, str], str]
    shared: bool = False
    description: str = ""


@frozen
class TouchPoint:
    """A registered channel adapter.

    ``budget_ms`` is how long a request at this touch point may wait for its answer
    ("real time is relative"). ``dialogue_timeout`` threads events without an explicit
    dialogue id into the customer's open dialogue when it was active this recently
    (the web's 30-minute session); ``None`` opens a dialogue per event. ``closes_on``
    names event types that close their dialogue (``call.ended``). ``routes`` are
    aiohttp route definitions the hub mounts for this touch point's own wire formats.
    ``public_keys``: code anyone can read (a web page's script) sends to it, so it may have
    public keys (``prm keys create --public``); every other touch point's keys stay secret.
    """

    name: str = field(validator=_check_name)
    channel: str = field()
    budget_ms: int = field(validator=validators.instance_of(int))
    dialogue_timeout: timedelta | None = None
    closes_on: frozenset[str] = field(default=frozenset(), converter=_names)
    routes: tuple[Any, ...] = field(default=(), converter=_routes)
    description: str = ""
    public_keys: bool = False

    @channel.validator
    def _check_channel(self, attribute: Any, value: str) -> None:
        if value not in CHANNELS:
            raise ValueError(f"TouchPoint.channel must be one of {sorted(CHANNELS)}, got {value!r}")

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.budget_ms <= 60_000:
            raise ValueError(f"TouchPoint.budget_ms must be between 1 and 60000, got {self.budget_ms}")


@frozen
class Adapter:
    """A vendor's wire format mounted on an existing touch point (Segment's tracking API on
    the web, Twilio's webhooks on the IVR).

    Its ``routes`` are aiohttp route definitions; the hub mounts them only if
    ``touchpoint`` is registered, and refuses to start otherwise. A wire format that is not
    HTTP (Asterisk's FastAGI over TCP) brings ``services``: aiohttp ``cleanup_ctx`` callables
    (``async def service(app): start; yield; stop``) that the server runs after the hub has
    started (``app[HUB]`` is set) and stops before it.
    """

    name: str = field(validator=_check_name)
    touchpoint: str = field(validator=_check_name)
    routes: tuple[Any, ...] = field(default=(), converter=_routes)
    description: str = ""
    services: tuple[Callable[[Any], Any], ...] = field(default=(), converter=_services)

    def __attrs_post_init__(self) -> None:
        if not self.routes and not self.services:
            raise ValueError(f"Adapter {self.name!r} has no routes and no services")


@frozen
class Partner:
    """A fulfillment service outside the company (field service, supplier, notification)."""

    name: str = field(validator=_check_name)
    role: str = field(validator=validators.min_len(1))
    description: str = ""


@frozen
class ValueProvider:
    """Knowledge a request can draw on.

    ``about`` is ``"business"`` (catalog, warranties, campaigns) or ``"customer"``
    (purchases, claims, preferences). ``provide`` is awaited with the
    :class:`ValueRequest` and returns a JSON-able mapping; it is cancelled when the
    touch point's budget runs out and then named in ``degraded``. ``touchpoints`` are the touch
    points whose requests it answers (empty: every one); ``[knowledge.<name>] touchpoints`` in
    the config overrides it.
    """

    name: str = field(validator=_check_name)
    about: Literal["business", "customer"] = field(validator=validators.in_(("business", "customer")))
    provide: Callable[[ValueRequest], Awaitable[Mapping[str, Any]]]
    description: str = ""
    touchpoints: frozenset[str] = field(default=frozenset(), converter=_names)


@frozen
class Event:
    """Something that happened at a touch point, idempotent on ``(touchpoint, id)``.

    ``identities`` are already normalized. ``dialogue`` is the touch point's own
    thread key (a call id, a transaction number) when it has one; ``dialogue_id`` is the
    hub's own dialogue id, for events the hub records into a known dialogue (the answer
    to a request). ``verified`` is false for events from a source that holds no secret
    (see :func:`prm_core.server.auth.as_claims`).
    """

    id: str
    type: str
    occurred_at: datetime
    touchpoint: str
    identities: tuple[Identity, ...] = field(default=(), converter=_identities)
    dialogue: str | None = None
    direction: Direction = "inbound"
    data: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)
    received_at: datetime | None = None
    dialogue_id: str | None = None
    # False for what a source without a secret sent (a public key, a Snowplow tracker): its
    # identities are the browser's own, and its dialogue key never reaches another customer
    verified: bool = True


@frozen
class RecordedEvent:
    """An event once it is durable: whose it is and which dialogue it joined.

    ``duplicate`` is true when the id had been recorded before; then the customer and
    dialogue are those of the first recording and nothing was changed. It is true too for a
    partner's answer about a customer erased since it was asked (:mod:`prm_core.outbox`),
    which is acknowledged and never written.
    """

    event: Event
    customer_id: str
    dialogue_id: str
    duplicate: bool = False
    seq: int | None = None


@frozen
class Customer:
    """A person, an organization or a group (department, household, buying community)."""

    id: str
    kind: CustomerKind = "person"
    tier: str | None = None
    tier_source: Literal["manual", "rule"] | None = None
    traits: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)
    created_at: datetime | None = None


@frozen
class Membership:
    """``member_id`` belongs to the group customer ``group_id`` with an optional role."""

    group_id: str
    member_id: str
    role: str | None = None


@frozen
class TimelineEntry(Mapping[str, Any]):
    """One event on a customer's timeline, as :attr:`CustomerView.timeline` holds it.

    Read it by attribute (``entry.type``, ``entry.occurred_at`` a datetime). It also reads
    as a mapping of its JSON shape (``entry["occurred_at"]`` the ISO string), the form
    plugins written before it was a type use.
    """

    event_id: str
    touchpoint: str
    type: str
    occurred_at: datetime
    dialogue: str | None = None
    direction: Direction = "inbound"
    data: Mapping[str, Any] = field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The entry as ``GET /v1/customers/{ref}`` shows it (without its ``summary``)."""
        return {
            "event_id": self.event_id,
            "touchpoint": self.touchpoint,
            "type": self.type,
            "occurred_at": _iso(self.occurred_at),
            "dialogue": self.dialogue,
            "direction": self.direction,
            "data": self.data,
        }

    def __getitem__(self, key: str) -> Any:
        if key not in _TIMELINE_KEYS:
            raise KeyError(key)
        return _iso(self.occurred_at) if key == "occurred_at" else getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_TIMELINE_KEYS)

    def __len__(self) -> int:
        return len(_TIMELINE_KEYS)


_TIMELINE_KEYS = ("event_id", "touchpoint", "type", "occurred_at", "dialogue", "direction", "data")


@frozen
class Dialogue:
    """A thread of events at one touch point: a web session, a call, a POS transaction."""

    id: str
    touchpoint: str
    customer_id: str
    ref: str
    status: Literal["open", "closed"] = "open"
    intent: Intent | None = None
    outcome: str | None = None
    opened_at: datetime | None = None
    last_event_at: datetime | None = None
    closed_at: datetime | None = None


@frozen
class Merge:
    """The audit record of two customers merged into one (and perhaps undone)."""

    id: str
    survivor_id: str
    merged_id: str
    reason: str
    cause_touchpoint: str | None
    cause_event_id: str | None
    merged_at: datetime
    undone_at: datetime | None = None


@frozen
class Offer:
    """Something to propose to the customer at this turn, ranked by ``score``."""

    code: str
    title: str
    score: float = 0.0
    source: str = ""
    description: str = ""
    data: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)


@frozen
class FulfillmentRequest:
    """Work asked of a partner on the customer's behalf (schedule, check stock, notify).

    ``idempotency_key`` stays the same on every retry of the same request.
    """

    id: str
    partner: str
    action: str
    customer_id: str
    dialogue_id: str | None = None
    payload: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)
    idempotency_key: str = ""


@frozen
class FulfillmentResult:
    """A partner's answer to a :class:`FulfillmentRequest`."""

    request_id: str
    partner: str
    status: Literal["confirmed", "pending", "rejected", "failed"]
    data: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)


@frozen
class CustomerView:
    """The 360-degree view of one customer, assembled from bounded queries.

    ``timeline`` is newest first and holds one page; ``next_cursor`` fetches the next.
    ``sections`` are what ``prm_enrich_view`` implementations added, by name.
    ``shared_identities`` are shared values (a household phone) this customer was seen with.
    """

    customer: Customer
    identities: tuple[Identity, ...] = ()
    shared_identities: tuple[Mapping[str, Any], ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    next_cursor: str | None = None
    dialogues: tuple[Dialogue, ...] = ()
    metrics: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)
    memberships: tuple[Mapping[str, Any], ...] = ()
    members: tuple[Mapping[str, Any], ...] = ()
    consents: tuple[Mapping[str, Any], ...] = ()
    offers: tuple[Offer, ...] = ()
    sections: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape the HTTP API answers (the 360-degree view's public shape)."""
        c = self.customer
        body: dict[str, Any] = {
            "id": c.id,
            "kind": c.kind,
            "tier": c.tier,
            "tier_source": c.tier_source,
            "traits": dict(c.traits),
            "created_at": _iso(c.created_at),
            "identities": [{"namespace": i.namespace, "value": i.value} for i in self.identities]
            + [dict(s) for s in self.shared_identities if Identity(s["namespace"], s["value"]) not in self.identities],
            "timeline": [t.to_json() for t in self.timeline],
            "next_cursor": self.next_cursor,
            "dialogues": [dialogue_json(d) for d in self.dialogues],
            "metrics": {k: _jsonable(v) for k, v in self.metrics.items()},
            "memberships": [dict(m) for m in self.memberships],
            "members": [dict(m) for m in self.members],
            "consents": [dict(x) for x in self.consents],
            "offers": [offer_json(o) for o in self.offers],
        }
        for name, section in self.sections.items():
            body.setdefault(name, section)
        return body


@frozen
class ValueRequest:
    """One dialogue turn waiting for an answer, handed to offer and value hooks.

    ``deadline`` is on the ``time.monotonic()`` clock; ``remaining_ms()`` is what is left
    of the touch point's budget.
    """

    event: RecordedEvent
    touchpoint: TouchPoint
    view: CustomerView
    deadline: float

    def remaining_ms(self) -> float:
        import time

        return max(0.0, (self.deadline - time.monotonic()) * 1000)


@frozen
class Delivery:
    """The answer to a request before the touch point renders it in its own format."""

    customer_id: str
    dialogue_id: str
    touchpoint: str
    customer: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)
    knowledge: Mapping[str, Any] = field(factory=dict, converter=_frozen_dict)
    offers: tuple[Offer, ...] = ()
    fulfillments: tuple[FulfillmentResult, ...] = ()
    degraded: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The default rendering: plain JSON."""
        return {
            "customer": dict(self.customer),
            "knowledge": dict(self.knowledge),
            "offers": [offer_json(o) for o in self.offers],
            "fulfillments": [
                {"request_id": f.request_id, "partner": f.partner, "status": f.status, "data": dict(f.data)}
                for f in self.fulfillments
            ],
        }


def offer_json(o: Offer) -> dict[str, Any]:
    return {
        "code": o.code,
        "title": o.title,
        "score": o.score,
        "source": o.source,
        "description": o.description,
        "data": dict(o.data),
    }


def dialogue_json(d: Dialogue) -> dict[str, Any]:
    return {
        "id": d.id,
        "touchpoint": d.touchpoint,
        "ref": d.ref,
        "status": d.status,
        "intent": d.intent,
        "outcome": d.outcome,
        "opened_at": _iso(d.opened_at),
        "last_event_at": _iso(d.last_event_at),
        "closed_at": _iso(d.closed_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    return value
