"""The planner: relationship planning's part of the hub, built once from the config.

It is the core's, not a plugin's: it keeps the value model, the tiers and the scorecard
figures current **inside the recording transaction** (:meth:`Planner.after_write`, called
by :mod:`prm_core.recording` after the metrics are written), and adds the ``value`` section
to the 360 view. Doing it in the same transaction means a crash can never leave an event
recorded but its customer's tier or value stale: both commit or neither does. The price is
a few set-based queries per batch, not per event (see bench/planning.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from attrs import define, evolve, field
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from ..config import Config
from ..errors import ConfigError, InvalidInput, NotFound
from ..feed.changes import NewChange
from ..feed.writing import emit
from ..feed.writing import mark as feed_mark
from ..feed.writing import rollback_to as feed_rollback
from ..merging import NO_CURRENCY, event_revenue
from ..model import CustomerView, Merge, Offer, ValueRequest
from ..recording import Written
from ..store import Store
from ..store.bulk import execute_many
from ..store.engine import _retryable as retryable  # the store's own judgement of what a retry fixes
from ..store.lists import one_of
from ..store.tables import (
    customer_value,
    customers,
    events,
    metrics,
    offers_made,
    planning_models,
    touchpoint_customers,
    touchpoint_day_revenue,
    touchpoint_days,
    utcnow,
)
from .campaigns import Campaign, in_control, running_campaigns
from .clv import PLANNING_MISSING, BgNbd, GammaGamma, models_from_params, science_installed
from .entitlements import parse_entitlements
from .money import Money, add_amounts, cents, event_currency
from .offers import Catalog, OfferSettings, builtin_offers
from .rules import EVENT_NAMES, Rule, compile_rule
from .segments import get_segment
from .value import DEFAULT_RFM, Rfm, amounts_of, customer_facts, rfm_from_config, rfm_from_params

__all__ = ["Planner", "refresh_all_tiers", "tier_rules"]

log = structlog.get_logger(__name__)

# built once: prm_core.store.bulk caches its plan per statement
_INSERT_VISITS_PG = pg_insert(touchpoint_customers).on_conflict_do_nothing()
_INSERT_VISITS_SQLITE = sqlite_insert(touchpoint_customers).on_conflict_do_nothing()
_SET_BOUGHT = (
    touchpoint_customers.update()
    .where(
        touchpoint_customers.c.touchpoint == sa.bindparam("_tp"),
        touchpoint_customers.c.day == sa.bindparam("_day"),
        touchpoint_customers.c.customer_id == sa.bindparam("_cid"),
        touchpoint_customers.c.bought.is_(False),
    )
    .values(bought=True)
)
_CHUNK = 400
_DAY_COUNTS = ("events", "dialogues", "requests", "in_budget", "degraded", "offers_made", "offers_accepted")
_ADD_DAY = (
    touchpoint_days.update()
    .where(touchpoint_days.c.touchpoint == sa.bindparam("_tp"), touchpoint_days.c.day == sa.bindparam("_day"))
    .values(
        revenue=touchpoint_days.c.revenue + sa.bindparam("_revenue", type_=touchpoint_days.c.revenue.type),
        **{c: getattr(touchpoint_days.c, c) + sa.bindparam(f"_{c}", type_=sa.Integer()) for c in _DAY_COUNTS},
    )
)
_INSERT_DAY = touchpoint_days.insert()


def _add_revenue(insert: Any) -> Any:
    """Add to a (touch point, day, currency)'s revenue, creating its row: one statement, atomic
    under concurrent hubs."""
    stmt = insert(touchpoint_day_revenue)
    r = touchpoint_day_revenue.c
    return stmt.on_conflict_do_update(
        index_elements=[r.touchpoint, r.day, r.currency], set_={"revenue": r.revenue + stmt.excluded.revenue}
    )


_ADD_REVENUE = {True: _add_revenue(pg_insert), False: _add_revenue(sqlite_insert)}
MODELS_TTL_S = 30.0
CAMPAIGNS_TTL_S = 10.0
RESPONSES = {"offer.accepted": "accepted", "offer.declined": "declined"}


@contextmanager
def _savepoint(conn: Connection) -> Iterator[None]:
    """What ``conn.begin_nested()`` does, in SQL of its own: SQLAlchemy's savepoint builds and
    compiles its statements anew each time, which cost more than the planning figures of a
    one-event transaction."""
    conn.exec_driver_sql("SAVEPOINT prm_planning")
    try:
        yield
    except BaseException:
        try:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT prm_planning")
            conn.exec_driver_sql("RELEASE SAVEPOINT prm_planning")
        except Exception as exc:  # the connection is gone: the first error is the one to tell
            log.warning("planning savepoint not rolled back", error=type(exc).__name__)
        raise
    conn.exec_driver_sql("RELEASE SAVEPOINT prm_planning")


# prepared once per database kind (the key: PostgreSQL or not), the id list one parameter
# (prm_core.store.lists): no per-call coercion or rendering of the list
_KINDS = (False, True)
_CUSTOMER_COLUMNS = (customers.c.id, customers.c.kind, customers.c.tier, customers.c.tier_source, customers.c.traits)
_UNMERGED = customers.c.merged_into.is_(None)
_CUSTOMERS_Q = {
    # SQLite cannot tell how long the bound list is, and would rather walk the index of every
    # unmerged customer than look the ids up; likely() says that condition filters next to nothing
    pg: sa.select(*_CUSTOMER_COLUMNS).where(
        one_of(customers.c.id, "ids", pg), _UNMERGED if pg else sa.func.likely(_UNMERGED)
    )
    for pg in _KINDS
}
_OFFERS_KNOWN_Q = {pg: sa.select(offers_made.c.id).where(one_of(offers_made.c.id, "ids", pg)) for pg in _KINDS}
_INSERT_OFFERS = offers_made.insert()
_METRICS_Q = {pg: sa.select(metrics).where(one_of(metrics.c.customer_id, "ids", pg)) for pg in _KINDS}
_VALUE_Q = {pg: sa.select(customer_value).where(one_of(customer_value.c.customer_id, "ids", pg)) for pg in _KINDS}
_SET_TIER = (
    customers.update()
    .where(
        customers.c.id == sa.bindparam("_id"),
        sa.or_(customers.c.tier_source.is_(None), customers.c.tier_source != "manual"),
    )
    .values(tier=sa.bindparam("tier"), tier_source=sa.bindparam("tier_source"))
)


def tier_rules(config: Config) -> tuple[Rule, ...]:
    """``[tiers.rules]`` compiled, in the order written (the first match wins)."""
    section = config.section("tiers", "rules")
    rules = []
    for name, text in section.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise ConfigError(f"[tiers.rules]: a tier name must be 1-64 characters, got {name!r}")
        rules.append(compile_rule(name, text, where=f"[tiers.rules].{name}"))
    return tuple(rules)


@define
class _Models:
    rfm: Rfm
    bgnbd: BgNbd | None
    gamma_gamma: GammaGamma | None
    fitted_at: datetime | None
    loaded: float
    # which model gives the lifetime value, from which fit, and the rule bounding it (the view shows it)
    clv: dict[str, Any] = field(factory=lambda: {"model": None, "reason": "not fitted yet (prm plan fit)"})


@define
class Planner:
    """Tiers, the value model, offers and entitlements as configured."""

    tiers: tuple[Rule, ...] = ()
    fixed_rfm: Rfm | None = None
    entitlements: dict[str, int] = field(factory=lambda: parse_entitlements(None))
    catalog: Catalog = field(factory=Catalog)
    offers: OfferSettings = field(factory=OfferSettings)
    on_ingest: bool = True
    money: Money = field(factory=Money)
    revenue_only: bool = field(init=False, default=True)
    _models: _Models | None = None
    _campaigns: list[tuple[Campaign, Rule]] = field(factory=list)
    _campaigns_loaded: float = float("-inf")

    @classmethod
    def from_config(cls, config: Config) -> Planner:
        """Build from ``[tiers.rules]``, ``[value.rfm]``, ``[entitlements]``, ``[catalog]``,
        ``[offers]``; anything invalid raises :class:`ConfigError` naming it."""
        return cls(
            tiers=tier_rules(config),
            fixed_rfm=rfm_from_config(config.section("value", "rfm")),
            entitlements=parse_entitlements(config.section("entitlements")),
            catalog=Catalog.from_config(config.section("catalog")),
            offers=OfferSettings.from_config(config.section("offers"), config.section("privacy", "defaults")),
            # [planning].on_ingest (true): false stops keeping value, tiers and scorecard on ingest
            # (for measuring what they cost: bench/planning.py); they go stale until it is back on
            on_ingest=config.flag("planning", "on_ingest", True),
            # [money]: the reporting currency and the rates into it (a typo stops the hub)
            money=Money.from_config(config),
        )

    # ---- the fitted models -----------------------------------------------------------

    def models(self, conn: Connection) -> _Models:
        """The fitted parameters, read at most every 30 s (a fit elsewhere shows up soon)."""
        if self._models is not None and time.monotonic() - self._models.loaded < MODELS_TTL_S:
            return self._models
        rows = {r.name: r for r in conn.execute(sa.select(planning_models))}
        # a fit in another currency than the one reported now measured other numbers: unused
        other = {
            name: r.params["currency"]
            for name, r in rows.items()
            if r.params.get("currency") not in (None, self.money.currency)
        }
        rows = {name: r for name, r in rows.items() if name not in other}
        params = {name: r.params for name, r in rows.items()}
        bg, gg = models_from_params(params)
        clv = _clv_provenance(rows, gg is not None)
        if bg is not None and not science_installed():  # fitted elsewhere: this hub cannot use it
            bg, gg, clv = None, None, {"model": None, "reason": PLANNING_MISSING}
        rfm = self.fixed_rfm or (rfm_from_params(params["rfm"]) if "rfm" in params else DEFAULT_RFM)
        fitted = rows["bgnbd"].fitted_at if "bgnbd" in rows else None
        if clv["model"] is None and other:
            was = sorted(set(other.values()))[0]
            clv = {"model": None, "reason": f"fitted in {was}, reported in {self.money.currency}: run prm plan fit"}
        self._models = _Models(rfm, bg, gg, fitted, time.monotonic(), clv)
        return self._models

    def forget_models(self) -> None:
        self._models = None

    # ---- tiers -----------------------------------------------------------------------

    def __attrs_post_init__(self) -> None:
        # whether the tier rules read nothing any event changes (see EVENT_NAMES)
        self.revenue_only = not any(rule.names & EVENT_NAMES for rule in self.tiers)

    def tier_for(self, facts: Mapping[str, Any]) -> Rule | None:
        """The first tier rule the facts match, in the order written."""
        return next((rule for rule in self.tiers if rule.matches(facts)), None)

    def facts_of(
        self,
        conn: Connection,
        ids: Sequence[str],
        now: datetime,
        sources: dict[str, tuple[str | None, str | None]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Rule facts of existing (not merged-away) customers: three bounded queries per chunk.
        ``sources``, when given, receives each customer's (tier, tier_source)."""
        models = self.models(conn)
        result: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(sorted(ids)):
            params = {"ids": list(chunk)}
            pg = conn.dialect.name == "postgresql"
            rows = conn.execute(_CUSTOMERS_Q[pg], params).all()
            m: dict[str, Mapping[str, Any]] = {
                r.customer_id: dict(r._mapping) for r in conn.execute(_METRICS_Q[pg], params)
            }
            v: dict[str, Mapping[str, Any]] = {
                r.customer_id: dict(r._mapping) for r in conn.execute(_VALUE_Q[pg], params)
            }
            for r in rows:
                if sources is not None:
                    sources[r.id] = (r.tier, r.tier_source)
                result[r.id] = customer_facts(
                    kind=r.kind,
                    tier=r.tier,
                    traits=r.traits,
                    metrics=m.get(r.id, {}),
                    value=v.get(r.id),
                    rfm=models.rfm,
                    bgnbd=models.bgnbd,
                    gamma_gamma=models.gamma_gamma,
                    historic=models.clv["model"] == "historic",
                    now=now,
                    money=self.money,
                )
        return result

    def refresh_tiers(self, conn: Connection, ids: Iterable[str], now: datetime) -> int:
        """Re-evaluate the rule tier of ``ids``; a tier set by hand is left alone. Returns
        how many changed."""
        wanted = sorted(set(ids))
        if not self.tiers or not wanted:
            return 0
        current: dict[str, tuple[str | None, str | None]] = {}
        changes = []
        for cid, facts in self.facts_of(conn, wanted, now, current).items():
            tier_now, source = current[cid]
            if source == "manual":
                continue
            rule = self.tier_for(facts)
            tier = rule.name if rule else None
            if tier != tier_now or (tier is None) != (source is None):
                changes.append({"_id": cid, "tier": tier, "tier_source": "rule" if tier else None})
        if changes:
            conn.execute(_SET_TIER, changes)
            emit(
                conn,
                *(
                    NewChange(
                        "customer.updated", c["_id"], {"tier": c["tier"], "tier_source": c["tier_source"]}, at=now
                    )
                    for c in changes
                ),
            )
        return len(changes)

    # ---- on ingest -------------------------------------------------------------------

    def after_write(self, conn: Connection, written: Sequence[Written], merges: Sequence[Merge], now: datetime) -> None:
        """Keep the value model, offers made and touch-point days current, then the tiers of
        every customer touched. Runs inside the recording transaction, in a savepoint: lock
        contention and lost races fail the whole batch, which the store retries; an event it
        refuses (an offer's answer dated before the offer) fails its batch with a 4xx; any other
        failure (a bug) is logged and rolled back to the savepoint, so the events are still
        recorded and only their planning figures are missing (``prm plan tiers`` redoes tiers)."""
        emitted = feed_mark(conn)
        try:
            with _savepoint(conn):
                self._after_write(conn, written, merges, now)
        except Exception as exc:
            feed_rollback(conn, emitted)  # the changes of what the savepoint undid
            if retryable(exc) or isinstance(exc, InvalidInput):  # InvalidInput: an event refused (4xx)
                raise
            log.error("planning on ingest failed; the events are recorded", error=type(exc).__name__, exc_info=exc)

    def _after_write(
        self, conn: Connection, written: Sequence[Written], merges: Sequence[Merge], now: datetime
    ) -> None:
        for merge in merges:
            self._fold_value(conn, merge.merged_id, merge.survivor_id)
        buys: dict[str, list[Any]] = {}
        days: dict[tuple[str, str], Counter[str]] = {}
        revenue: dict[tuple[str, str], Decimal] = {}
        by_currency: dict[tuple[str, str, str], Decimal] = {}
        made: list[dict[str, Any]] = []
        responses: list[tuple[Written, tuple[str, str]]] = []
        with_revenue: set[str] = set()
        seen: dict[tuple[str, str, str], bool] = {}  # (touch point, day, customer) -> bought there
        for w in written:
            ev = w.event
            key = (ev.touchpoint, ev.occurred_at.date().isoformat())
            counts = days.get(key)
            if counts is None:  # not setdefault: that makes a Counter per event
                counts = days[key] = Counter()
            counts["events"] += 1
            counts["dialogues"] += int(w.opened_dialogue)
            amount = event_revenue(ev.data) if ev.direction == "inbound" else None
            if ev.direction == "inbound":
                visit = (*key, w.customer_id)
                seen[visit] = seen.get(visit, False) or (amount is not None and amount > 0)
            if amount is not None:
                with_revenue.add(w.customer_id)
                revenue[key] = revenue.get(key, Decimal(0)) + amount
                currency = event_currency(ev.data)
                money_key = (*key, currency)
                by_currency[money_key] = by_currency.get(money_key, Decimal(0)) + amount
                if amount > 0:
                    b = buys.setdefault(w.customer_id, [0, Decimal(0), ev.occurred_at, ev.occurred_at, {}])
                    b[0] += 1
                    b[1] += amount
                    b[2] = min(b[2], ev.occurred_at)
                    b[3] = max(b[3], ev.occurred_at)
                    b[4][currency] = b[4].get(currency, Decimal(0)) + amount
            # the hub's own answer to a request (only the hub records into a dialogue by its id:
            # a touch point cannot forge requests or offers made with an event of this type)
            if ev.direction == "outbound" and ev.type == "delivery" and ev.dialogue_id is not None:
                counts["requests"] += 1
                elapsed, budget = ev.data.get("elapsed_ms"), ev.data.get("budget_ms")
                if isinstance(elapsed, int | float) and isinstance(budget, int | float):
                    counts["in_budget"] += int(elapsed <= budget)
                counts["degraded"] += int(bool(ev.data.get("degraded")))
                shown = [(o, None) for o in ev.data.get("offers_made") or ()]
                for offer, response in [*shown, *((o, "held_out") for o in ev.data.get("held_out") or ())]:
                    if isinstance(offer, Mapping) and isinstance(offer.get("id"), str):
                        made.append(
                            {
                                "id": offer["id"][:64],
                                "customer_id": w.customer_id,
                                "touchpoint": ev.touchpoint,
                                "dialogue_id": w.dialogue_id,
                                "code": str(offer.get("code", ""))[:200],
                                "source": str(offer.get("source", ""))[:200],
                                "campaign": offer.get("campaign"),
                                "made_at": ev.occurred_at,
                                "response": response,
                                "responded_at": None,
                            }
                        )
                        counts["offers_made"] += response is None
            elif ev.type in RESPONSES:
                responses.append((w, key))
        if made:
            self._insert_offers(conn, made)
        for w, key in responses:
            if self._record_response(conn, w) == "accepted":
                days[key]["offers_accepted"] += 1
        if buys:
            self._add_purchases(conn, buys)
        if days:
            self._add_days(conn, days, revenue)
        if by_currency:
            conn.execute(
                _ADD_REVENUE[conn.dialect.name == "postgresql"],
                [
                    {"touchpoint": tp, "day": day, "currency": c, "revenue": amount}
                    for (tp, day, c), amount in sorted(by_currency.items())
                ],
            )
        if seen:
            self._add_visits(conn, seen)
        if self.tiers:
            # only customers whose facts the rules read may have changed: unless the rules read
            # what any event changes (event_count, ...), those with a sale or return in this batch
            changed = set(buys) if self.revenue_only else {w.customer_id for w in written}
            changed |= {
                w.customer_id
                for w in written
                if w.event.direction == "inbound" and event_revenue(w.event.data) is not None
            }
            self.refresh_tiers(conn, changed | {m.survivor_id for m in merges}, now)

    def _insert_offers(self, conn: Connection, made: list[dict[str, Any]]) -> None:
        ids = [m["id"] for m in made]
        known = set(conn.execute(_OFFERS_KNOWN_Q[conn.dialect.name == "postgresql"], {"ids": ids}).scalars())
        fresh = {m["id"]: m for m in made if m["id"] not in known}
        if fresh:
            conn.execute(_INSERT_OFFERS, list(fresh.values()))
            emit(
                conn,
                *(
                    # a control group's turn too (response "held_out"): campaign lift is measured against it
                    NewChange("offer.made", m["customer_id"], _offer_data(m, m["response"]))
                    for m in fresh.values()
                ),
            )

    def _record_response(self, conn: Connection, w: Written) -> str | None:
        """Mark the offer ``data.offer_id`` answered, if it is open and within the window."""
        offer_id = w.event.data.get("offer_id")
        if not isinstance(offer_id, str):
            return None
        response = RESPONSES[w.event.type]
        at = w.event.occurred_at
        o = offers_made.c
        done = conn.execute(
            offers_made.update()
            .where(
                o.id == offer_id,
                o.customer_id == w.customer_id,  # only the customer it was made to answers it
                o.response.is_(None),
                o.made_at <= at,
                o.made_at >= at - timedelta(hours=self.offers.response_window_hours),
            )
            .values(response=response, responded_at=at)
        )
        if done.rowcount:
            row = conn.execute(sa.select(offers_made).where(o.id == offer_id)).one()
            emit(conn, NewChange("offer.responded", w.customer_id, _offer_data(dict(row._mapping), response)))
            return response
        early = conn.execute(
            sa.select(o.made_at).where(o.id == offer_id, o.customer_id == w.customer_id, o.made_at > at)
        ).first()
        if early is not None:
            # an answer before the question: a clock or a mix-up at the touch point, never a response
            raise InvalidInput(
                f"{w.event.type} {w.event.id} occurred before its offer was made", "occurred_at", code="before_offer"
            )
        return None

    def _add_purchases(self, conn: Connection, buys: Mapping[str, list[Any]]) -> None:
        v = customer_value.c
        existing: dict[str, Any] = {}
        for chunk in _chunks(sorted(buys)):
            existing.update(
                {r.customer_id: r for r in conn.execute(sa.select(customer_value).where(v.customer_id.in_(chunk)))}
            )
        inserts, updates = [], []
        for cid, (count, total, first, last, amounts) in buys.items():
            row = existing.get(cid)
            if row is None:
                inserts.append(
                    {
                        "customer_id": cid,
                        "purchases": count,
                        "purchase_total": total,
                        "purchase_total_by_currency": _amounts(amounts),
                        "first_purchase_at": first,
                        "last_purchase_at": last,
                    }
                )
            else:
                updates.append(
                    {
                        "_cid": cid,
                        "purchases": row.purchases + count,
                        "purchase_total": row.purchase_total + total,
                        "purchase_total_by_currency": _amounts(
                            add_amounts(add_amounts({}, row.purchase_total_by_currency or {}), amounts)
                        ),
                        "first_purchase_at": min(filter(None, (row.first_purchase_at, first))),
                        "last_purchase_at": max(filter(None, (row.last_purchase_at, last))),
                    }
                )
        emit(conn, *(NewChange("customer.updated", r["customer_id"], {"value": _value_data(r)}) for r in inserts))
        emit(conn, *(NewChange("customer.updated", r["_cid"], {"value": _value_data(r)}) for r in updates))
        if inserts:
            conn.execute(customer_value.insert(), inserts)
        if updates:
            conn.execute(
                customer_value.update()
                .where(v.customer_id == sa.bindparam("_cid"))
                .values(
                    purchases=sa.bindparam("purchases"),
                    purchase_total=sa.bindparam("purchase_total"),
                    purchase_total_by_currency=sa.bindparam("purchase_total_by_currency"),
                    first_purchase_at=sa.bindparam("first_purchase_at"),
                    last_purchase_at=sa.bindparam("last_purchase_at"),
                ),
                updates,
            )

    def rebuild_value(self, conn: Connection, ids: Sequence[str]) -> None:
        """Recompute the purchases of ``ids`` from their events: after an unmerge, which moves
        events back and so cannot be undone by arithmetic. A scan of these customers only."""
        v = customer_value.c
        conn.execute(customer_value.delete().where(v.customer_id.in_(list(ids))))
        e = events.c
        q = sa.select(e.customer_id, e.occurred_at, e.data).where(
            e.customer_id.in_(list(ids)), e.direction == "inbound"
        )
        buys: dict[str, list[Any]] = {}
        for r in conn.execute(q):
            amount = event_revenue(r.data)
            if amount is not None and amount > 0:
                b = buys.setdefault(r.customer_id, [0, Decimal(0), r.occurred_at, r.occurred_at, {}])
                b[0] += 1
                b[1] += amount
                b[2], b[3] = min(b[2], r.occurred_at), max(b[3], r.occurred_at)
                currency = event_currency(r.data)
                b[4][currency] = b[4].get(currency, Decimal(0)) + amount
        if buys:
            self._add_purchases(conn, buys)
        self.refresh_tiers(conn, ids, utcnow())

    def _fold_value(self, conn: Connection, merged: str, survivor: str) -> None:
        """A merge: the merged customer's purchases and offers become the survivor's."""
        conn.execute(offers_made.update().where(offers_made.c.customer_id == merged).values(customer_id=survivor))
        v = customer_value.c
        row = conn.execute(sa.select(customer_value).where(v.customer_id == merged)).one_or_none()
        if row is None:
            return
        conn.execute(customer_value.delete().where(v.customer_id == merged))
        amounts = add_amounts({}, row.purchase_total_by_currency or {})
        self._add_purchases(
            conn, {survivor: [row.purchases, row.purchase_total, row.first_purchase_at, row.last_purchase_at, amounts]}
        )

    def _add_days(
        self, conn: Connection, days: Mapping[tuple[str, str], Counter[str]], revenue: Mapping[tuple[str, str], Decimal]
    ) -> None:
        for (tp, day), counts in sorted(days.items()):
            added = {c: counts[c] for c in _DAY_COUNTS}
            money = revenue.get((tp, day), Decimal(0))
            if not any(added.values()) and (tp, day) not in revenue:
                continue
            # one prebuilt statement adding every counter (most add 0): building the UPDATE for
            # the columns that changed cost more than running it, once per recording transaction
            done = conn.execute(
                _ADD_DAY, {"_tp": tp, "_day": day, **{f"_{c}": n for c, n in added.items()}, "_revenue": money}
            )
            if not done.rowcount:
                conn.execute(_INSERT_DAY, {"touchpoint": tp, "day": day, "revenue": money, **added})

    def _add_visits(self, conn: Connection, seen: Mapping[tuple[str, str, str], bool]) -> None:
        rows = [
            {"touchpoint": tp, "day": day, "customer_id": cid, "bought": b}
            for (tp, day, cid), b in sorted(seen.items())
        ]
        insert = _INSERT_VISITS_PG if conn.dialect.name == "postgresql" else _INSERT_VISITS_SQLITE
        execute_many(conn, insert, rows)
        bought = [{"_tp": r["touchpoint"], "_day": r["day"], "_cid": r["customer_id"]} for r in rows if r["bought"]]
        if bought:
            execute_many(conn, _SET_BOUGHT, bought)

    # ---- offers ----------------------------------------------------------------------

    def propose(self, request: ValueRequest) -> list[Offer]:
        """The built-in offer rules and the running campaigns' offers for this turn."""
        offers = builtin_offers(request, self.catalog, self.entitlements)
        now = utcnow()
        running = [(c, rule) for c, rule in self._campaigns if c.running(now, request.touchpoint.name)]
        if running:
            facts = self.facts_from_view(request.view, now)
            cid = request.view.customer.id
            for campaign, rule in running:
                if rule.matches(facts):
                    offers.append(campaign.make_offer(in_control(campaign.name, cid, campaign.control_percent)))
        return offers

    def facts_from_view(self, view: CustomerView, now: datetime) -> dict[str, Any]:
        """The rule facts of a customer from their view (built with :meth:`annotate`)."""
        section = view.sections.get("value") or {}
        value = None
        if section.get("purchases"):
            value = {
                "purchases": section["purchases"],
                "purchase_total": Decimal(section["purchase_total"] or 0),
                "purchase_total_by_currency": section.get("purchase_total_by_currency") or {},
                "first_purchase_at": datetime.fromisoformat(section["first_purchase_at"].replace("Z", "+00:00")),
                "last_purchase_at": datetime.fromisoformat(section["last_purchase_at"].replace("Z", "+00:00")),
            }
        models = self._models or _Models(self.fixed_rfm or DEFAULT_RFM, None, None, None, 0.0)
        c = view.customer
        return customer_facts(
            kind=c.kind,
            tier=c.tier,
            traits=c.traits,
            metrics=view.metrics,
            value=value,
            rfm=models.rfm,
            bgnbd=models.bgnbd,
            gamma_gamma=models.gamma_gamma,
            now=now,
            historic=models.clv["model"] == "historic",
            money=self.money,
        )

    def load_campaigns(self, conn: Connection, now: datetime) -> None:
        """The running campaigns with their segments' rules, read at most every 10 s."""
        if time.monotonic() - self._campaigns_loaded < CAMPAIGNS_TTL_S:
            return
        loaded = []
        for campaign in running_campaigns(conn, now):
            try:
                loaded.append((campaign, get_segment(conn, campaign.segment).rule))
            except (NotFound, ConfigError):  # its segment was deleted or no longer compiles
                continue
        self._campaigns, self._campaigns_loaded = loaded, time.monotonic()

    def forget_campaigns(self) -> None:
        self._campaigns_loaded = float("-inf")

    # ---- the view --------------------------------------------------------------------

    def annotate(self, conn: Connection, view: CustomerView, now: datetime) -> CustomerView:
        """Add the ``value`` section (facts, scores, prediction, and how the tier was set).

        Time-relative figures are as of the start of the hour (``as_of``), so two reads of
        one customer agree unless something happened to them in between.
        """
        now = now.replace(minute=0, second=0, microsecond=0)
        owners = [view.customer.id, *(m["id"] for m in view.members)]
        value: dict[str, Any] | None = None
        for r in conn.execute(_VALUE_Q[conn.dialect.name == "postgresql"], {"ids": owners}):  # as for facts_of
            if value is None:
                value = dict(r._mapping)
            else:
                value["purchases"] += r.purchases
                value["purchase_total"] += r.purchase_total
                value["purchase_total_by_currency"] = _amounts(
                    add_amounts(add_amounts({}, value["purchase_total_by_currency"]), r.purchase_total_by_currency)
                )
                value["first_purchase_at"] = min(value["first_purchase_at"], r.first_purchase_at)
                value["last_purchase_at"] = max(value["last_purchase_at"], r.last_purchase_at)
        models = self.models(conn)
        self.load_campaigns(conn, now)
        c = view.customer
        facts = customer_facts(
            kind=c.kind,
            tier=c.tier,
            traits=c.traits,
            metrics=view.metrics,
            value=value,
            rfm=models.rfm,
            bgnbd=models.bgnbd,
            gamma_gamma=models.gamma_gamma,
            now=now,
            historic=models.clv["model"] == "historic",
            money=self.money,
        )
        by_rules = self.tier_for(facts)
        # what ``metrics`` already shows (revenue, counts, touch points) is not repeated here
        keep = ("purchases", "days_since_last_purchase", "r_score", "f_score", "m_score", "rfm", "clv", "p_alive")
        section: dict[str, Any] = {k: facts[k] for k in keep} | {"churn_risk": facts["churn_risk"]}
        if section["days_since_last_purchase"] is not None:
            section["days_since_last_purchase"] = int(section["days_since_last_purchase"])
        section["as_of"] = now.isoformat().replace("+00:00", "Z")
        # money in the reporting currency, or kept apart per currency when one has no rate
        money = self.money
        spent = value["purchase_total_by_currency"] if value else {}
        section["currency"] = money.currency
        section["purchase_total"] = cents(money.total(spent))
        section["purchase_total_by_currency"] = {c: cents(Decimal(a)) for c, a in sorted(spent.items())}
        revenue = amounts_of(view.metrics.get("revenue_by_currency"), view.metrics.get("lifetime_revenue"))
        section["lifetime_revenue"] = money.figure(revenue)
        section["mixed_currencies"] = facts["mixed_currencies"]
        section["first_purchase_at"] = _iso(value["first_purchase_at"]) if value else None
        section["last_purchase_at"] = _iso(value["last_purchase_at"]) if value else None
        section["tier"] = {
            "name": c.tier,
            "source": c.tier_source,
            "rule": by_rules.text if by_rules and c.tier_source == "rule" and by_rules.name == c.tier else None,
            "by_rules": by_rules.name if by_rules else None,
            "manual_wins": c.tier_source == "manual",
        }
        section["model"] = {
            "rfm": models.rfm.to_json(),
            "clv_horizon_days": 365,
            "fitted_at": models.fitted_at.isoformat().replace("+00:00", "Z") if models.fitted_at else None,
            "clv": {
                **models.clv,
                "currency": money.currency,
                "capped": bool(
                    models.bgnbd is not None
                    and models.bgnbd.cap is not None
                    and section["clv"] is not None
                    and section["clv"] >= round(models.bgnbd.cap, 2)
                ),
            },
        }
        # the core's metrics add every currency up; the view shows revenue in its currency: as
        # recorded when it is in one, converted into the reporting currency when it is in
        # several, or null with the currencies kept apart when one of them has no rate
        shown = dict(view.metrics)
        (only,) = revenue if len(revenue) == 1 else (None,)
        total: Decimal | None
        if only is not None and only != NO_CURRENCY:
            currency, total = only, revenue[only]
        else:
            currency, total = money.currency, money.total(revenue)
        orders = view.metrics.get("order_count") or 0
        cent = Decimal("0.01")
        shown["lifetime_revenue"] = None if total is None else total.quantize(cent)
        shown["average_sale"] = (total / orders).quantize(cent) if total is not None and orders else None
        shown["currency"] = currency
        shown["mixed_currencies"] = money.mixed(revenue)
        return evolve(view, metrics=shown, sections={**view.sections, "value": section})


def _clv_provenance(rows: Mapping[str, Any], spend_model: bool) -> dict[str, Any]:
    """What the view says about the lifetime value: its model, its fit, the rule bounding it."""
    if "bgnbd" in rows:
        row = rows["bgnbd"]
        return {
            "model": "bgnbd+gammagamma" if spend_model else "bgnbd",
            "fitted_at": row.fitted_at.isoformat().replace("+00:00", "Z"),
            "customers": row.customers,
            "converged": bool(row.params.get("converged", False)),
            "history_days": row.params.get("history_days"),
            "cap": row.params.get("clv_p99"),
            "rule": "at most the 99th percentile of the fit's own predictions (cap)",
        }
    if "clv_fallback" in rows:
        row = rows["clv_fallback"]
        return {
            "model": "historic",
            "fitted_at": row.fitted_at.isoformat().replace("+00:00", "Z"),
            "customers": row.customers,
            "reason": row.params.get("reason"),
            "rule": "what the customer has spent: no prediction",
        }
    return {"model": None, "reason": "not fitted yet (prm plan fit)"}


async def refresh_all_tiers(store: Store, planner: Planner, *, chunk: int = 500) -> tuple[int, int]:
    """Re-evaluate every current customer's rule tier, ``chunk`` customers per transaction.
    Returns (customers evaluated, tiers changed)."""
    seen, changed = 0, 0

    def page(after: str) -> Callable[[Connection], list[str]]:
        c = customers.c
        q = sa.select(c.id).where(c.id > after, c.merged_into.is_(None)).order_by(c.id).limit(chunk)
        return lambda conn: list(conn.execute(q).scalars())

    def refresh(ids: list[str]) -> Callable[[Connection], int]:
        return lambda conn: planner.refresh_tiers(conn, ids, utcnow())

    ids = await store.read(page(""))
    while ids:
        changed += await store.write(refresh(ids))
        seen += len(ids)
        ids = await store.read(page(ids[-1]))
    return seen, changed


def _amounts(amounts: Mapping[str, Decimal]) -> dict[str, str]:
    """Amounts per currency as stored: decimal strings, in code order."""
    return {c: str(a) for c, a in sorted(amounts.items())}


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _offer_data(offer: Mapping[str, Any], response: str | None) -> dict[str, Any]:
    """The ``data`` of an ``offer.made`` or ``offer.responded`` change (prm_core.feed)."""
    data = {k: offer[k] for k in ("code", "source", "campaign", "touchpoint", "dialogue_id")}
    data["offer_id"] = offer["id"]
    if response is not None:
        data["response"] = response
    return data


def _value_data(row: Mapping[str, Any]) -> dict[str, Any]:
    """The value model's stored figures of one customer, as a ``customer.updated`` change's ``value``."""
    return {
        "purchases": row["purchases"],
        "purchase_total": str(row["purchase_total"]),
        "purchase_total_by_currency": dict(row["purchase_total_by_currency"]),
        "first_purchase_at": _iso(row["first_purchase_at"]) if row["first_purchase_at"] else None,
        "last_purchase_at": _iso(row["last_purchase_at"]) if row["last_purchase_at"] else None,
    }
