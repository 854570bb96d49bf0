"""Survey answers: replies and link answers recorded as ``survey.answered`` events, and kept
for the scorecard and the 360 view.

**A reply is read from the change feed.** A touch point records a customer's reply as an
inbound ``message.received`` event (``data``: ``channel``, ``text``, ``in_reply_to`` the
``Message.id`` it answers, when known). One hub process at a time (the holder of the lease on
the ``surveys`` row of ``trigger_cursor``) reads the feed's ``event.recorded`` changes of
replies and answers after its stored position (the database picks them out of the others).
For a reply it finds the survey it answers: the message ``in_reply_to`` names, when it is a
survey to the same customer sent at most ``[surveys] expires`` before;
else the customer's latest survey on the reply's channel sent at most ``[surveys]
reply_window`` before. A reply that starts with a score on that survey's scale
(:func:`prm_core.surveys.scales.parse_score`) is recorded as a ``survey.answered`` event;
any other reply is left as it is.

**Nothing is lost, nothing is counted twice.** The position moves past a reply only after
its answer is recorded: a crash in between reads the reply again. The answer's event id is
derived from the survey message's id (:func:`answer_id`) and recorded at the touch point the
survey was sent from, so recording it again is a duplicate, and so is any later answer to
the same survey: **the first answer counts**, whether a reply or a link. The same reader
writes each ``survey.answered`` event it meets to ``survey_answers`` (one row per survey
message) in the transaction that moves its position past it: what the scorecard and the
view read follows the log exactly, link answers included. Reading the feed rather than
hooking into the recording transaction keeps ingest as fast as it was, at the price of a
moment between the reply and its answer.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from attrs import define, field
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, NotFound, Overloaded, PrmError, StoreUnavailable
from ..feed.changes import Change
from ..feed.reading import FellBehind, Page, bounds
from ..feed.writing import event_topic
from ..ids import new_id
from ..model import Event, RecordedEvent
from ..store.tables import changes, events, survey_answers, trigger_cursor, utcnow
from ..triggers.engine import claim_cursor, outbound_event_id
from .links import SurveySettings, load_link_key, make_token, survey_url
from .scales import SCALES, describe, parse_score

if TYPE_CHECKING:
    from ..hub import Hub
    from ..triggers.definitions import Act

__all__ = ["ANSWERED", "RECEIVED", "Surveys", "answer_id", "sent_event_id"]

log = structlog.get_logger(__name__)

CURSOR = "surveys"
RECEIVED = "message.received"
ANSWERED = "survey.answered"
# the commits the reader wakes for: those of replies and answers (it sleeps through the rest)
_TOPICS = frozenset({event_topic(RECEIVED), event_topic(ANSWERED)})
ANSWER_PREFIX = "survey:"
_SCAN = 50  # the most recent messages looked through for a reply that names none
_SKEW = timedelta(minutes=1)  # a reply naming its message may carry a clock a little behind ours
GATHER_S = 0.1  # the least time between two reads of the feed while it is caught up
NOTE_S = 5.0  # how often the position is written when only other events went by


def answer_id(message_id: str) -> str:
    """The id of the ``survey.answered`` event of survey ``message_id``: one per survey."""
    return ANSWER_PREFIX + hashlib.sha256(message_id.encode()).hexdigest()[:40]


def sent_event_id(message_id: str) -> str:
    """The id of the ``message.sent`` event the trigger engine recorded for ``message_id``
    (its outbound events' ids are derived from the act's key, as the message's id is)."""
    return outbound_event_id(message_id)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _survey_of(row: Any) -> Mapping[str, Any] | None:
    """The survey a ``message.sent`` row asked, or ``None`` (not a survey, or erased since)."""
    data = row.data if isinstance(row.data, Mapping) else {}
    survey = data.get("survey")
    if not isinstance(survey, Mapping) or survey.get("kind") not in SCALES:
        return None
    return survey


def find_message(conn: Connection, message_id: str, touchpoints: Sequence[str]) -> Any:
    """The ``message.sent`` row of ``message_id`` (one indexed look-up per touch point)."""
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 64 or not touchpoints:
        return None
    e = events.c
    q = sa.select(events).where(
        e.touchpoint.in_(sorted(touchpoints)), e.event_id == sent_event_id(message_id), e.type == "message.sent"
    )
    return conn.execute(q).first()


VOUCHED_CHANNELS = frozenset({"sms"})
"""Channels whose carrier vouches for the sender (a text comes from the number it says, and
its webhook is signed): there a reply naming no message answers the customer's latest survey.
An email's ``From`` proves nothing, so an email reply answers only the survey it names (its
``In-Reply-To``, a Message-ID only the recipient saw)."""


def _latest_survey(conn: Connection, customer_id: str, channel: str, at: datetime, window: timedelta) -> Any:
    e = events.c
    q = (
        sa.select(events)
        .where(
            e.customer_id == customer_id,
            e.occurred_at >= at - window,
            e.occurred_at <= at,
            e.type == "message.sent",
            e.direction == "outbound",
        )
        .order_by(e.occurred_at.desc(), e.seq.desc())
        .limit(_SCAN)
    )
    for row in conn.execute(q):
        if _survey_of(row) is not None and row.data.get("channel") == channel:
            return row
    return None


def answer_event(message: Any, score: int, *, via: str, at: datetime, reply: Any = None) -> Event:
    """The ``survey.answered`` event for survey ``message`` (its ``message.sent`` row): at the
    touch point the survey went from, in its dialogue (whose customer it is), naming no
    identity of its own."""
    survey = _survey_of(message)
    assert survey is not None
    data = {
        **describe(str(survey["kind"]), score, str(survey.get("about") or message.touchpoint)),
        "message_id": message.data.get("message_id"),
        "trigger": message.data.get("trigger"),
        "channel": message.data.get("channel"),
        "via": via,
    }
    if reply is not None:
        data["reply_event_id"] = reply.event_id
    return Event(
        id=answer_id(str(message.data.get("message_id"))),
        type=ANSWERED,
        occurred_at=at,
        touchpoint=message.touchpoint,
        identities=(),
        direction="inbound",
        dialogue_id=message.dialogue_id,
        data=data,
    )


@define
class Surveys:
    """The hub's surveys: what a survey message carries, link answers, and the reader of the
    feed that turns replies into answers (see the module docstring)."""

    hub: Hub
    settings: SurveySettings
    lease_s: float = 30.0
    batch: int = 500
    owner: str = field(factory=lambda: new_id("srv"))
    key: bytes = field(init=False, default=b"")
    _cursor: int | None = field(init=False, default=None)
    _stored: int = field(init=False, default=0)  # the position as written (what a take-over reads)
    _lease_until: float = field(init=False, default=0.0)
    _cursor_written: float = field(init=False, default=0.0)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _stopping: bool = field(init=False, default=False)

    # ---- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the link key and start reading the feed (from its newest change, the first time)."""
        self.key = await self.hub.store.read(functools.partial(load_link_key, settings=self.settings))
        now = utcnow()

        def write(conn: Connection) -> None:
            if conn.execute(sa.select(trigger_cursor.c.name).where(trigger_cursor.c.name == CURSOR)).first() is None:
                _pruned, head = bounds(conn)
                conn.execute(trigger_cursor.insert().values(name=CURSOR, position=head, updated_at=now))

        await self.hub.store.write(write)
        self._task = asyncio.create_task(self._follow(), name="prm-surveys-feed")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None

        def release(conn: Connection) -> None:
            c = trigger_cursor.c
            conn.execute(
                trigger_cursor.update()
                .where(c.name == CURSOR, c.lease_owner == self.owner)
                .values(lease_owner=None, lease_until=None)
            )

        try:
            await self.hub.store.write(release)
        except Exception as exc:  # the lease runs out by itself
            log.warning("survey lease not released", error=type(exc).__name__)

    # ---- what a survey message carries ---------------------------------------------------

    def survey_of(
        self, act: Act, message_id: str, change_type: str, change: Mapping[str, Any], touchpoint: str | None
    ) -> dict[str, Any] | None:
        """``Message.data`` of a survey message: ``survey`` (``kind``, ``scale``, ``about``,
        ``question``, ``expires_at``) and ``survey_url`` (its signed link; ``None`` without a
        ``base_url``). ``about`` defaults to what the change was about: a fulfillment's
        partner role (``field_service``), an event's or a dialogue's touch point, else the
        touch point the message goes from."""
        if act.survey is None:
            return None
        about = act.about
        if about is None:
            found = change.get("role") or change.get("partner") if change_type == "fulfillment.updated" else None
            found = found or change.get("touchpoint") or touchpoint
            about = str(found)[:64] if found else "unknown"
        expires_at = utcnow() + timedelta(seconds=self.settings.expires_s)
        low, high = SCALES[act.survey]
        url = None
        if self.settings.base_url is not None:
            url = survey_url(self.settings.base_url, make_token(self.key, message_id, act.survey, expires_at))
        survey = {
            "kind": act.survey,
            "scale": [low, high],
            "about": about,
            "question": act.question,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        }
        return {"survey": survey, "survey_url": url}

    # ---- answers by link ---------------------------------------------------------------

    async def survey_message(self, message_id: str, kind: str) -> Any:
        """The ``message.sent`` row of a survey still open to answers, or :class:`NotFound`."""
        names = self.hub.registrations.touchpoints.names()
        row = await self.hub.store.read(functools.partial(find_message, message_id=message_id, touchpoints=names))
        survey = _survey_of(row) if row is not None else None
        if survey is None or survey["kind"] != kind:
            raise NotFound("no such survey")
        return row

    async def answer_of(self, message: Any) -> Mapping[str, Any] | None:
        """The answer already recorded for survey ``message`` (the event's data), if any."""
        e = events.c
        q = sa.select(e.data).where(
            e.touchpoint == message.touchpoint, e.event_id == answer_id(str(message.data.get("message_id")))
        )
        found = await self.hub.store.read(lambda conn: conn.execute(q).scalar())
        return found if isinstance(found, Mapping) else None

    async def answer_by_link(self, message: Any, score: int) -> tuple[RecordedEvent, Mapping[str, Any]]:
        """Record ``score`` for survey ``message``; ``(recorded, the answer that counts)`` (the
        first one, when it was answered before: ``recorded.duplicate``)."""
        (recorded,) = await self.hub.record([answer_event(message, score, via="link", at=utcnow())])
        answer = recorded.event.data
        if recorded.duplicate:
            answer = await self.answer_of(message) or answer
        return recorded, answer

    # ---- following the feed ------------------------------------------------------------

    async def _follow(self) -> None:
        signal = self.hub.feed.signal
        poll = self.settings.poll_s
        while not self._stopping:
            try:
                cursor = await self._hold()
                if cursor is None:  # another hub process reads the feed for the surveys
                    await asyncio.sleep(self.lease_s / 2)
                    continue
                # watched from before the read, so a reply committed while it runs is not missed
                watched = signal.watch(_TOPICS)
                try:
                    read = functools.partial(read_survey_changes, after=cursor, limit=self.batch)
                    try:
                        page = await self.hub.store.read(read)
                    except FellBehind as exc:
                        log.error("survey answers fell behind the feed's retention", pruned_through=exc.pruned_through)
                        await self._advance(exc.pruned_through, [])
                        continue
                    replies = [c for c in page.changes if c.data.get("type") == RECEIVED]
                    answered = [c for c in page.changes if c.data.get("type") == ANSWERED]
                    # other events (the database leaves them out) are noted now and then
                    if replies:
                        found = await self.hub.store.read(functools.partial(self._answers, replies))
                        if found:
                            await self._record(found)  # before the position moves past their replies
                    if (
                        replies
                        or answered
                        or (page.next > self._stored and time.monotonic() - self._cursor_written > NOTE_S)
                    ):
                        await self._advance(page.next, answered)
                    else:  # only other events: noted now and then (reading them again is harmless)
                        self._cursor = page.next
                    if page.changes:
                        if len(page.changes) < self.batch:
                            await asyncio.sleep(GATHER_S)  # let a few more commits gather before reading again
                        continue
                    if await signal.wait(poll, watched=watched):
                        # woken by a commit: let a few more gather, so busy ingest is read once a moment
                        await asyncio.sleep(GATHER_S)
                finally:
                    signal.unwatch(watched)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away for a while
                log.warning("survey answers not read", error=type(exc).__name__)
                self._cursor = None
                await asyncio.sleep(poll)

    async def _record(self, found: list[Event]) -> None:
        try:
            await self.hub.record(found)
        except PrmError as exc:
            if isinstance(exc, StoreUnavailable | Overloaded):
                raise  # for now: read again and retry
            # one answer the hub refuses must not hold up the others, nor the reader, forever
            for event in found:
                try:
                    await self.hub.record([event])
                except (InvalidInput, NotFound) as refused:
                    log.warning("survey answer refused", error=str(refused)[:200])

    async def _hold(self) -> int | None:
        """The position to read after, while this process holds the lease."""
        if self._cursor is not None and self._lease_until - time.monotonic() > self.lease_s / 2:
            return self._cursor
        now = utcnow()

        self._cursor = await self.hub.store.write(
            functools.partial(claim_cursor, name=CURSOR, owner=self.owner, now=now, lease_s=self.lease_s)
        )
        if self._cursor is not None:
            self._stored = self._cursor
            self._lease_until = time.monotonic() + self.lease_s
        return self._cursor

    async def _advance(self, to: int, answered: Sequence[Change]) -> None:
        now = utcnow()

        def write(conn: Connection) -> bool:
            c = trigger_cursor.c
            moved = conn.execute(
                trigger_cursor.update()
                .where(c.name == CURSOR, c.lease_owner == self.owner, c.position == self._stored)
                .values(position=to, updated_at=now, lease_until=now + timedelta(seconds=self.lease_s))
            ).rowcount
            if not moved:
                return False
            _keep_answers(conn, answered)
            return True

        if await self.hub.store.write(write):
            self._cursor = self._stored = to
            self._lease_until = time.monotonic() + self.lease_s
            self._cursor_written = time.monotonic()
        else:  # the lease was taken over: read the position again
            self._cursor = None

    def _answers(self, replies: Sequence[Change], conn: Connection) -> list[Event]:
        """The ``survey.answered`` events these replies give (none for a reply that is not one)."""
        names = self.hub.registrations.touchpoints.names()
        found: list[Event] = []
        e = events.c
        for change in replies:
            reply = conn.execute(
                sa.select(events).where(
                    e.touchpoint == change.data.get("touchpoint"), e.event_id == change.data.get("event_id")
                )
            ).first()
            if reply is None or reply.direction != "inbound" or not isinstance(reply.data, Mapping):
                continue
            text, channel = reply.data.get("text"), reply.data.get("channel")
            if not isinstance(text, str) or not isinstance(channel, str):
                continue
            at = _aware(reply.occurred_at)
            named = reply.data.get("in_reply_to")
            if named:
                message = find_message(conn, str(named), names)
                if message is None or _survey_of(message) is None or message.customer_id != reply.customer_id:
                    continue  # not a survey, or another customer's: not an answer
                sent = _aware(message.occurred_at)
                if not sent - _SKEW <= at <= sent + timedelta(seconds=self.settings.expires_s):
                    continue
            elif channel not in VOUCHED_CHANNELS:
                continue  # anyone can write From: a customer's address; only a reply naming the survey counts
            else:
                window = timedelta(seconds=self.settings.reply_window_s)
                message = _latest_survey(conn, reply.customer_id, channel, at, window)
                if message is None or message.touchpoint not in names:
                    continue
            survey = _survey_of(message)
            assert survey is not None
            score = parse_score(text, str(survey["kind"]))
            if score is None:
                continue  # a comment, a question, a score off the scale: the reply stays a reply
            found.append(answer_event(message, score, via="reply", at=at, reply=reply))
        return found


_WANTED: sa.BindParameter[list[str]] = sa.bindparam("wanted", [RECEIVED, ANSWERED], expanding=True)
_SURVEY_PAGE = (
    sa.select(changes)
    .where(
        changes.c.position > sa.bindparam("after"),
        changes.c.position <= sa.bindparam("head"),
        changes.c.type == "event.recorded",
        changes.c.data["type"].as_string().in_(_WANTED),
    )
    .order_by(changes.c.position)
    .limit(sa.bindparam("limit"))
)


def read_survey_changes(conn: Connection, *, after: int, limit: int) -> Page:
    """The ``event.recorded`` changes of replies and answers after ``after``, as
    :func:`~prm_core.feed.reading.read_changes` reads a filtered page: the database picks
    them out of the others (ingest's every event), so the reader costs ingest next to nothing."""
    pruned, head = bounds(conn)
    if after < pruned:
        raise FellBehind(after, pruned)
    rows = conn.execute(_SURVEY_PAGE, {"after": after, "head": head, "limit": limit}).all()
    found = [Change(seq=r.position, type=r.type, at=r.at, customer_id=r.customer_id, data=r.data or {}) for r in rows]
    if len(found) == limit:
        return Page(found, found[-1].seq)
    # fewer than asked for: everything up to the head read above was looked at (positions are
    # final once visible, see prm_core.feed.writing)
    return Page(found, max(after, head))


def _keep_answers(conn: Connection, answered: Sequence[Change]) -> None:
    """Write the answers of these ``survey.answered`` changes to ``survey_answers`` (the first
    per survey message; an erased customer's, scrubbed before it got here, is not kept)."""
    e = events.c
    for change in answered:
        row = conn.execute(
            sa.select(events).where(
                e.touchpoint == change.data.get("touchpoint"), e.event_id == change.data.get("event_id")
            )
        ).first()
        if row is None or not isinstance(row.data, Mapping):
            continue
        data = row.data
        kind, score, message_id = data.get("kind"), data.get("score"), data.get("message_id")
        if kind not in SCALES or not isinstance(score, int) or not isinstance(message_id, str):
            continue
        a = survey_answers.c
        if conn.execute(sa.select(a.message_id).where(a.message_id == message_id)).first() is not None:
            continue
        answered_at = _aware(row.occurred_at)
        conn.execute(
            survey_answers.insert().values(
                message_id=message_id,
                event_id=row.event_id,
                touchpoint=row.touchpoint,
                customer_id=row.customer_id,
                kind=kind,
                score=score,
                about=str(data.get("about") or row.touchpoint)[:64],
                trigger=str(data.get("trigger") or "")[:64],
                via=str(data.get("via") or "")[:8],
                answered_at=answered_at,
                day=answered_at.date().isoformat(),
            )
        )
