"""The warehouse tables: their columns, keys and partitions, in one place.

Both warehouse destinations (Parquet files and a PostgreSQL schema) and ``prm export`` write
these tables: six of the hub's facts, and ``changes`` for the change types plugins add.
Every row carries ``position``: the feed position of the change it reflects (for rows of a
history snapshot, the snapshot's position), so a later version of a row always has a greater
one. ``events`` and ``changes`` are written once each; the other tables keep versions of a
row (a dialogue opened, then closed): the newest ``position`` per key is the current one
(``docs/warehouse.md`` gives the query).
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import frozen

__all__ = ["TABLES", "Column", "Table"]

# logical types, mapped to Arrow types (parquet.py) and PostgreSQL types (postgres.py)
TEXT, BIGINT, TIME, JSON, MONEY, FLAG, TEXTS = "text", "bigint", "timestamp", "json", "money", "bool", "texts"


@frozen
class Column:
    name: str
    type: str
    about: str


@frozen
class Table:
    """A warehouse table. ``key``: what identifies a row (its versions share it);
    ``customer``: the columns naming a customer, which an erasure looks for; ``day_from``: the
    column whose UTC day names a Parquet partition (``None``: the day the version was written)."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    customer: tuple[str, ...]
    day_from: str | None
    about: str

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


_POSITION = Column("position", BIGINT, "feed position of the change this row reflects")

TABLES: Mapping[str, Table] = {
    t.name: t
    for t in (
        Table(
            "events",
            (
                _POSITION,
                Column("event_id", TEXT, "the event's id, unique per touch point"),
                Column("touchpoint", TEXT, "where it happened"),
                Column("type", TEXT, "the event type (page, purchase, call.ended, ...)"),
                Column("occurred_at", TIME, "when it happened (UTC)"),
                Column("received_at", TIME, "when the hub recorded it (UTC)"),
                Column("customer_id", TEXT, "the customer it was recorded for"),
                Column("dialogue_id", TEXT, "the dialogue it belongs to"),
                Column("direction", TEXT, "inbound (from the customer) or outbound (the hub's answer)"),
                Column("data", JSON, 'the event\'s payload as JSON; {"erased": true} once erased'),
            ),
            key=("touchpoint", "event_id"),
            customer=("customer_id",),
            day_from="occurred_at",
            about="every event recorded, once each",
        ),
        Table(
            "customers",
            (
                _POSITION,
                Column("customer_id", TEXT, "the customer's id"),
                Column("kind", TEXT, "person, organization or group"),
                Column("tier", TEXT, "the tier now"),
                Column("tier_source", TEXT, "rules or manual"),
                Column("traits", JSON, "the traits as JSON"),
                Column("identities", TEXTS, "current identities, namespace:value"),
                Column("merged_into", TEXT, "the survivor it was merged into, if it was"),
                Column("erased", FLAG, "erased: no traits, tier or identities remain"),
                Column("created_at", TIME, "first seen"),
                Column("updated_at", TIME, "profile last changed"),
                Column("event_count", BIGINT, "events recorded"),
                Column("order_count", BIGINT, "sales less voids"),
                Column("return_count", BIGINT, "returns"),
                Column("lifetime_revenue", MONEY, "revenue net of returns, all currencies added"),
                Column("purchases", BIGINT, "sales (positive revenue)"),
                Column("first_seen_at", TIME, "first event"),
                Column("last_seen_at", TIME, "latest event"),
                Column("last_purchase_at", TIME, "latest sale"),
            ),
            key=("customer_id",),
            customer=("customer_id",),
            day_from=None,
            about="versions of each customer: identities, tier, traits and value figures",
        ),
        Table(
            "dialogues",
            (
                _POSITION,
                Column("dialogue_id", TEXT, "the dialogue's id"),
                Column("touchpoint", TEXT, "where it happens"),
                Column("customer_id", TEXT, "whose it is"),
                Column("status", TEXT, "open or closed"),
                Column("intent", TEXT, "sales, service, ..."),
                Column("outcome", TEXT, "how it ended"),
                Column("opened_at", TIME, "first event"),
                Column("last_event_at", TIME, "latest event"),
                Column("closed_at", TIME, "when it closed"),
            ),
            key=("dialogue_id",),
            customer=("customer_id",),
            day_from=None,
            about="versions of each dialogue",
        ),
        Table(
            "offers",
            (
                _POSITION,
                Column("offer_id", TEXT, "the offer's id"),
                Column("customer_id", TEXT, "to whom"),
                Column("touchpoint", TEXT, "where"),
                Column("dialogue_id", TEXT, "in which dialogue"),
                Column("code", TEXT, "the offer's code"),
                Column("source", TEXT, "the rule or plugin that proposed it"),
                Column("campaign", TEXT, "the campaign, if any"),
                Column("made_at", TIME, "when it was made"),
                Column("response", TEXT, "accepted or declined, once answered"),
                Column("responded_at", TIME, "when"),
            ),
            key=("offer_id",),
            customer=("customer_id",),
            day_from=None,
            about="versions of each offer made, with its response",
        ),
        Table(
            "fulfillments",
            (
                _POSITION,
                Column("fulfillment_id", TEXT, "the outbox row's id"),
                Column("request_id", TEXT, "the partner request's id"),
                Column("partner", TEXT, "which partner"),
                Column("role", TEXT, "the partner's role"),
                Column("action", TEXT, "what was asked"),
                Column("customer_id", TEXT, "for whom"),
                Column("touchpoint", TEXT, "where the request came from"),
                Column("dialogue_id", TEXT, "in which dialogue"),
                Column("cause_event_id", TEXT, "the event that planned it"),
                Column("status", TEXT, "pending, confirmed, rejected, failed, completed"),
                Column("attempts", BIGINT, "calls made"),
                Column("requested_at", TIME, "when it was planned"),
                Column("updated_at", TIME, "latest change"),
            ),
            key=("fulfillment_id",),
            customer=("customer_id",),
            day_from=None,
            about="versions of each partner request (what was sent stays in the hub)",
        ),
        Table(
            "merges",
            (
                _POSITION,
                Column("merge_id", TEXT, "the merge's id"),
                Column("survivor_id", TEXT, "the customer kept"),
                Column("merged_id", TEXT, "the customer merged into it"),
                Column("reason", TEXT, "why"),
                Column("merged_at", TIME, "when"),
                Column("undone_at", TIME, "when it was undone, if it was"),
            ),
            key=("merge_id",),
            customer=("survivor_id", "merged_id"),
            day_from=None,
            about="versions of each merge (an undo is a new version)",
        ),
        Table(
            "changes",
            (
                _POSITION,
                Column("type", TEXT, "the change's type, one a plugin defines (loyalty.earned, ...)"),
                Column("at", TIME, "when it was made"),
                Column("customer_id", TEXT, "whom it is about, if anyone"),
                Column("data", JSON, "its fields as JSON; {} once the customer is erased"),
            ),
            key=("position",),
            customer=("customer_id",),
            day_from="at",
            about="the feed's changes of types plugins define, once each",
        ),
    )
}
