"""Mutation testing of the core's security- and correctness-critical modules (prints, never asserts).

Each mutant is one small change to one module (a comparison swapped, ``and`` for ``or``, a
``not`` dropped, an ``if`` negated, a constant off by one, a raise or a statement removed,
``continue`` for ``break``, an element dropped from a literal table or from an ``except``
tuple, a condition dropped from a query); the module's own tests
run against it, and a mutant no test fails is a *survivor*: a change of behaviour the tests
would not notice. The score is killed / (mutants - equivalent mutants)::

    python bench/mutation.py                       # every module below: ~1,900 mutants, hours on 2 busy cores
    python bench/mutation.py --only keys,auth      # some of them
    python bench/mutation.py --list dialogue       # the mutants, not run
    python bench/mutation.py --budget 1800         # stop starting mutants after 30 min (the rest: "not run")

The driver parses the module with :mod:`ast`, so nothing is written to the source tree: a
forked child installs an import hook that serves the mutated source under the module's own
name and path, then runs ``pytest -x`` on the module's test selection (SQLite only). Heavy
third-party imports happen once, in the parent, before the forks. A mutant whose tests run
longer than ``--timeout-factor`` times the unmutated run counts as killed (an endless loop).

Mutants judged equivalent (no input tells them from the original) are listed in
:data:`EQUIVALENT` with the reason, by a key that survives edits elsewhere in the module.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# name -> (module path, its tests: a narrow, fast selection that should notice any change; a
# pattern such as tests/test_privacy*.py stands for every file it matches)
_FEED_TESTS = [
    "tests/test_feed_edges.py",
    "tests/test_feed.py",
    "tests/test_feed_crash.py",
    "tests/test_destinations.py",
]
MODULES: dict[str, tuple[str, list[str]]] = {
    "keys": ("prm_core/keys.py", ["tests/test_keys.py", "tests/test_public_keys.py"]),
    "auth": (
        "prm_core/server/auth.py",
        [
            "tests/test_auth.py",
            "tests/test_keys.py",
            "tests/test_public_keys.py",
            "tests/test_log_noise.py::test_a_flood_of_429s_is_counted_and_logged_once_per_key",
        ],
    ),
    "identity": ("prm_core/identity.py", ["tests/test_identity.py"]),
    "merging": ("prm_core/merging.py", ["tests/test_purchases.py", "tests/test_merges.py"]),
    "dialogue": ("prm_core/dialogue.py", ["tests/test_dialogues.py"]),
    "rules": ("prm_core/planning/rules.py", ["tests/test_rules.py", "tests/test_tiers.py"]),
    "formats": ("prm_core/formats.py", ["tests/test_formats.py", "tests/test_pos_import.py"]),
    "events": ("prm_core/events.py", ["tests/test_parsing.py", "tests/test_api.py", "tests/test_hardening.py"]),
    "jsonbody": ("prm_core/server/jsonbody.py", ["tests/test_parsing.py", "tests/test_hardening.py"]),
    "erasure": (
        "prm_core/privacy/erasure.py",
        [
            "tests/test_erasure*.py",
            "tests/test_privacy_hardening.py",
            "tests/test_privacy_retention.py",
            "tests/test_claims.py",
            "tests/test_feed.py::test_erasure_scrubs_the_persons_changes",
            "tests/test_partner.py::test_erasure_calls_off_unsent_partner_work_and_scrubs_what_was_sent",
        ],
    ),
    "outbox": (
        "prm_core/outbox.py",
        [
            "tests/test_outbox_schedule.py",
            "tests/test_outbox_stop.py",
            "tests/test_outbox_rows.py",
            "tests/test_outbox.py",
            "tests/test_erasure_partner_answers.py",
            "tests/test_partner.py",
        ],
    ),
    # the table of each type's fields: every core type emitted (feed_edges) and a trigger's message first
    "changes": (
        "prm_core/feed/changes.py",
        [
            "tests/test_feed_edges.py",
            "tests/test_triggers.py::test_a_customer_becoming_platinum_gets_the_welcome_once",
            *_FEED_TESTS[1:],
        ],
    ),
    "writing": ("prm_core/feed/writing.py", _FEED_TESTS),
    # test_feed_crash.py is left out of these: it runs `prm serve` in subprocesses, which import
    # the module unmutated, so it cannot fail for a mutant (and takes 20 s); each module's own
    # tests come first, as they fail soonest
    "reading": ("prm_core/feed/reading.py", ["tests/test_feed_reading.py", *_FEED_TESTS[:2], *_FEED_TESTS[3:]]),
    "feed": ("prm_core/feed/feed.py", ["tests/test_feed_running.py", *_FEED_TESTS[:2], *_FEED_TESTS[3:]]),
    # the relay's own tests first (fast), then the destinations': the rest of _FEED_TESTS never
    # starts a relay (test_feed_crash.py's does, in a `prm serve` child the mutant never reaches)
    "relay": ("prm_core/feed/relay.py", ["tests/test_relay.py", "tests/test_destinations.py"]),
    # `prm destinations` (the status of each destination): its own tests, then the CLI's in process
    "status": (
        "prm_core/feed/status.py",
        [
            "tests/test_feed_status.py",
            "tests/test_destinations.py::test_prm_destinations_shows_position_lag_and_dead_letters_and_replays",
        ],
    ),
    # the NATS sink: its settings and connection, then a hub's delivery to the JetStream server
    # at 127.0.0.1:4222 (both need it)
    "jetstream": (
        "prm_core/feed/jetstream.py",
        [
            "tests/test_jetstream.py",
            "tests/test_destinations.py::test_a_bad_setting_stops_the_hub_naming_the_key",
            "tests/test_destinations.py::test_nats_gets_each_change_on_its_subject_once",
        ],
    ),
    # the settings' getters: the sinks' own settings tests first (webhook, NATS, warehouse), then
    # the relay's (Refused) and the hub's bad settings
    "destinations": (
        "prm_core/feed/destinations.py",
        [
            "tests/test_destination_settings.py",
            "tests/test_webhook.py",
            "tests/test_jetstream.py",
            "tests/test_warehouse.py",
            "tests/test_relay.py",
            "tests/test_destinations.py",
        ],
    ),
    # the kinds the core provides: the test that lists them, then the documented warehouse's
    "builtin": (
        "prm_core/feed/builtin.py",
        [
            "tests/test_destinations.py::test_the_core_provides_the_webhook_nats_parquet_and_postgresql_kinds",
            "tests/test_warehouse_destination.py::test_the_documented_destinations_are_accepted_at_start",
        ],
    ),
    # the webhook sink's own tests, then the relay's with a webhook destination (nothing else in
    # the feed's selection configures one)
    "webhook": (
        "prm_core/feed/webhook.py",
        [
            "tests/test_webhook.py",
            "tests/test_destinations.py::test_webhook_receives_every_change_in_order_signed",
            "tests/test_destinations.py::test_types_filter_and_start_latest",
            "tests/test_destinations.py::test_webhook_retries_5xx_with_the_same_batch_and_dead_letters_4xx",
            "tests/test_destinations.py::test_a_bad_setting_stops_the_hub_naming_the_key",
        ],
    ),
}


def test_files(name: str) -> list[str]:
    """The module's test selection, patterns expanded; a file or pattern matching nothing is
    reported (a renamed test file would otherwise shrink the selection without a word)."""
    found: list[str] = []
    for entry in MODULES[name][1]:
        file, sep, rest = entry.partition("::")
        matches = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(file)) if "*" in file else [file]
        matches = [m for m in matches if (ROOT / m).exists()]
        if not matches:
            print(f"{name}: no test file matches {entry}", file=sys.stderr, flush=True)
        found += [m + sep + rest for m in matches]
    return found


# module name -> {mutant key: why no test can tell it from the original}
EQUIVALENT: dict[str, dict[str, str]] = {
    "keys": {
        "KeyRing: 10.0 -> 9.0 #1": "a shorter cache lifetime only makes a revocation take effect sooner",
        "KeyRing: 10000 -> 10001 #1": "the bound on remembered misses, one more or less: memory only",
        "KeyRing: 10000 -> 9999 #1": "the bound on remembered misses, one more or less: memory only",
        "create_key: 32 -> 33 #1": "a longer secret (264 bits) than the documented 256",
        "KeyRing.verify: self._cache.pop(key_id, None) -> pass #1": (
            "drops a revoked key's stale entry; the miss recorded beside it answers first, and the "
            "entry is stale (older than ttl) by the time that miss expires, so it is never used"
        ),
    },
    "merging": {
        "event_revenue: raw is None or isinstance(raw, bool) -> raw is None and isinstance(raw, bool) #1": (
            "None and booleans are refused by Decimal(str(raw)) too (InvalidOperation): the test is a shortcut"
        ),
        "PurchaseTotals.add_purchase: at > self.last_purchase -> at >= self.last_purchase #1": (
            "a sale at the same time as the latest one sets last_purchase to the time it already holds"
        ),
        **{
            f"unmerge: 400 -> {size} #{n}": "the size of the chunks an IN list is cut into: the same rows change"
            for size in (399, 401)
            for n in (1, 2)
        },
    },
    "dialogue": {
        "DialogueState: False -> True #3": (
            "stored's eq=False: no code compares two DialogueStates (the writer keeps them in dicts and "
            "lists by id, never looks one up by value)"
        ),
        "DialogueState: False -> True #4": "stored's repr=False: a state's repr is never part of what the hub writes",
        "DialogueState: False -> True #2": (
            "dirty's default: every state the writer keeps in `touched` went through apply() or close(), "
            "which set it, so a state that starts dirty is written exactly when one that does not is"
        ),
        "DialogueState.apply: event.occurred_at > self.last_event_at -> event.occurred_at >= self.last_event_at #1": (
            "an event at the dialogue's latest time sets last_event_at to the time it already holds"
        ),
        "DialogueState.apply: event.occurred_at < self.opened_at -> event.occurred_at <= self.opened_at #1": (
            "an event at the dialogue's opening time sets opened_at to the time it already holds"
        ),
    },
    "rules": {
        **{
            f"Rule.matches: (rule_engine.EngineError, LookupError, TypeError, ValueError) -> {narrowed} #1": (
                "rule-engine reports every evaluation failure found (null compared, missing key, wrong "
                "type, division by zero) as an EngineError; the built-in errors are a second guard"
            )
            for narrowed in (
                "(rule_engine.EngineError, TypeError, ValueError)",
                "(rule_engine.EngineError, LookupError, ValueError)",
                "(rule_engine.EngineError, LookupError, TypeError)",
            )
        },
    },
    "identity": {
        "normalize_identities: 2 -> 1 #1": (
            "one identity sorted is the same one identity: the shortcut before the sort only saves the call"
        ),
    },
    "events": {
        "_string: len(value) <= limit -> len(value) < limit #1": (
            "the usual case's shortcut: a string exactly at the limit goes on to the full checks below, "
            "which accept it as well"
        ),
        **{
            f"parse_time: EARLIEST <= value <= (now or utcnow()) + FUTURE_SKEW -> {narrowed} #1": (
                "the in-window shortcut's edge: a time exactly at an end goes on to check_window, "
                "which returns it as well"
            )
            for narrowed in (
                "EARLIEST < value <= (now or utcnow()) + FUTURE_SKEW",
                "EARLIEST <= value < (now or utcnow()) + FUTURE_SKEW",
            )
        },
    },
    "erasure": {
        "<module>: 500 -> 501 #1": "the number of rows updated per statement: the same rows are scrubbed",
        "<module>: 500 -> 499 #1": "the number of rows updated per statement: the same rows are scrubbed",
        "_scrub_claims: 0 -> 1 #6": (
            "`rowcount or 0`: every row of a chunk was read in the same write transaction (SQLite's "
            "single writer), so the count is never 0 or None"
        ),
        "erase_customer: True -> False #2": "zip's strict: gather returns exactly one result per purge",
        "_scrub_claims: 1 -> 0 #3": (
            "the unescaped needle with its opening quote holds the value, itself a needle: it finds "
            "no row the value does not"
        ),
        "erase_in_transaction: 1 -> 2 #1": (
            "the bump of a called-off request's attempts: by 2 fences a held claim as well as by 1"
        ),
    },
    "outbox": {
        **{
            f"Outbox: {m} #1": (
                "the rows claimed per round: every due row is claimed, oldest first, in rounds of "
                "another size (the worker goes on at once after a full round)"
            )
            for m in ("16 -> 17", "16 -> 15")
        },
        "Outbox._run: room > 0 -> room >= 0 #1": "with no room the worker asks for 0 rows (LIMIT 0) and claims none",
        "Outbox._run: await asyncio.sleep(0) -> pass #1": (
            "the next round's claim() awaits the database at once, which lets the loop's other tasks run as well"
        ),
        "Outbox.stop: self._inflight.clear() -> pass #1": (
            "each ended attempt's done callback takes it out of the set, at the latest on the loop's next turn, "
            "before a restarted worker first reads it"
        ),
        **{
            f"Outbox: False -> True #{n}": (
                "`init=False` of a private field: from_config passes only the settings, by name"
            )
            for n in (1, 2, 3)
        },
        "Outbox.claim.due: 1 -> 2 #1": "whether the first of one row or of two exists: the same answer",
    },
    "writing": {
        "discard: conn.info.pop(_PENDING, None) -> pass #1": (
            "a failed transaction's list is left on the connection until its next write, whose begin() "
            "replaces it (or drops it): memory only"
        ),
        "begin: conn.info.pop(_PENDING, None) -> pass #1": (
            "no list outlives its transaction (the store discards it in a `finally`): "
            "with the feed off there is none to drop"
        ),
        **{
            f"<module>: 1347570946 -> {key} #1": (
                "the feed's advisory lock key: any constant works, as long as every hub process uses the same"
            )
            for key in (1347570945, 1347570947)
        },
    },
    "reading": {
        **{
            f"FeedSignal: False -> True #{n}": "`init=False` of a private field: every caller makes FeedSignal()"
            for n in (1, 2)
        },
    },
    "webhook": {
        "WebhookSink.deliver: 200 -> 199 #1": (
            "aiohttp reads a 1xx answer as interim and waits for the final one: no answer it returns is below 200"
        ),
    },
    "feed": {
        **{
            f"Feed: False -> True #{n}": "`init=False` of a private field: from_config passes only the settings"
            for n in (1, 2, 3)
        },
        "Feed.stop: self.store.on_changes = None -> pass #1": (
            "the hub stops the feed last and then disposes of the store: no commit follows to call it"
        ),
        "Feed.read: left <= 0 -> left < 0 #1": (
            "a database read lies between the deadline and the check: the monotonic clock has moved, "
            "so `left` is never exactly 0"
        ),
        "Feed.read: False -> True #1": (
            "`check` on the look after a wait: page.next is at most a head already read, and the head "
            "never moves back (pruning keeps its mark), so it is never past the head"
        ),
    },
    "relay": {
        **{
            f"Destination: False -> True #{n}": (
                "`init=False` of a progress field: open_destinations passes the settings, by name"
            )
            for n in range(2, 10)
        },
        **{
            f"Relay: False -> True #{n}": "`init=False` of a private field: the hub passes the settings, by name"
            for n in (1, 2)
        },
        "Destination: 0 -> 1 #1": (
            "the cursor before the first read: the lag is max(0, head - cursor) with head 0 until "
            "then, and that read sets the cursor first"
        ),
        # the lease as this process last wrote it only chooses between reading the cursor (which
        # checks the row's owner) and claiming it again (which checks the row's lease): either
        # way the same cursor, with one more read or one more write
        **{
            key: "the lease kept in memory only spares a write: the next round reads or claims the same cursor"
            for key in (
                "Relay._cursor: dest.lease_until = None -> pass #1",
                "Relay._cursor: dest.lease_until = now + timedelta(seconds=self.lease_s) -> pass #1",
                "Relay._pin: dest.lease_until = None -> pass #1",
                "Relay._advance: dest.lease_until = None -> pass #1",
                "Relay._advance: dest.lease_until = None -> pass #2",
                "Relay._advance: dest.lease_until = now + timedelta(seconds=self.lease_s) -> pass #1",
                "Relay._renew: dest.lease_until = until -> pass #1",
                "Relay._renew: renewed.rowcount -> not renewed.rowcount #1",
                "Relay._cursor: dest.lease_until - now > timedelta(seconds=self.lease_s / 2) -> "
                "dest.lease_until - now >= timedelta(seconds=self.lease_s / 2) #1",
            )
        },
        **{
            f"Relay._cursor: 2 -> {n} #1": (
                "the margin left when an idle process claims its lease again: a third or all of it, "
                "like a half, is more than a poll, so the lease is held all the same"
            )
            for n in (1, 3)
        },
        "Relay._renew: destination_cursors.update().where(c.name == dest.name, c.lease_own... -> "
        "destination_cursors.update().where(c.lease_owner == self.owner) #1": (
            "renewing every lease this process holds, not only the delivering destination's: each "
            "is its own, and lasts lease_s from the write either way"
        ),
        "Relay._run: False -> True #1": (
            "read_changes' check that `after` is not past the head: a relay's cursor never is (it "
            "moves to positions read, the head as it registers, or a replay's checked position)"
        ),
        "Relay._claim: c.lease_owner.is_(row.lease_owner) if row.lease_owner is None else ... -> "
        "c.lease_owner == row.lease_owner #1": "SQLAlchemy renders `== None` as IS NULL, as is_(None)",
        **{
            key: (
                "which dead letters the destination has among the refused changes: none (the cursor "
                "moves past a change in the transaction that letters it, and a replay forgets the "
                "letters from its position on)"
            )
            for key in (
                "Relay._advance.write: d.position.in_([r.seq for r in refused]) -> "
                "d.position.not_in([r.seq for r in refused]) #1",
                "Relay._advance.write: sa.select(d.position).where(d.destination == dest.name, d.position.... -> "
                "sa.select(d.position).where(d.destination == dest.name) #1",
            )
        },
    },
    "status": {
        "destination_status: isinstance(types, list) and types -> isinstance(types, list) or types #1": (
            "only an empty `types` list tells them apart, and the hub refuses one as it starts "
            "(a destination's types are a non-empty list)"
        ),
    },
    "jsonbody": {
        # without an escape that can make one (``strings`` false), no string or key holds a NUL
        # or a surrogate: the parser refuses raw control characters, strict UTF-8 has no surrogates
        "_problem: _unkeepable(node) if strings else None -> _unkeepable(node) #1": (
            "with `strings` false no string can hold what _unkeepable looks for: the test is a shortcut"
        ),
        "loads: '\\\\u' in text and _ESCAPES.search(text) is not None -> "
        "'\\\\u' in text or _ESCAPES.search(text) is not None #1": (
            "every body with an escape gets the whole walk: it finds nothing more, and its depth "
            "limit is too_deep's (same edge, same error)"
        ),
        "loads: text.count('[') + text.count('{') > max_depth -> text.count('[') + text.count('{') >= max_depth #1": (
            "the count only skips too_deep when there are too few containers to be too deep; "
            "one more call of too_deep decides the same"
        ),
        "too_deep: continue -> break #1": (
            "only the value itself can be neither list nor object (children are stacked only when "
            "they are), and then the stack is empty: breaking and continuing both end the loop"
        ),
    },
}

# module name -> {scope: words}: mutants in that function whose description has one of the
# words change only what PostgreSQL runs (advisory locks); the driver runs SQLite, so they are
# counted apart ("pg-only") and left out of the score. The suite runs them on PostgreSQL.
POSTGRES_ONLY: dict[str, dict[str, tuple[str, ...]]] = {
    "merging": {"unmerge": ("dialect.name", "locked", "advisory_locks(", "wanted", "{merged, target}")},
    "erasure": {
        "_lock_identities": ("",),
        "lock_customer": ("advisory_locks(",),
        # what runs in place of SQLite's: its cast, its search (strpos), the identity locks
        "erase_in_transaction": ("else sa.Text -> sa.LargeBinary", "_lock_identities(conn, customer_id) -> pass"),
        "_scrub_claims": (
            "else sa.Text -> sa.LargeBinary",
            "strpos(payload, n) > 0 -> sa.func.strpos",
            "-> [sa.func.instr(",
        ),
    },
    # the lock that makes positions follow commit order when several transactions write at once;
    # and discard's skip of a connection a cancellation invalidated (touching its info raises on
    # PostgreSQL only, which test_feed_edges' cancelled write checks)
    "writing": {"flush": ("_LOCK_AND_NOTIFY",), "discard": ("conn.invalidated",)},
    # the retention mark read again after the page: PostgreSQL's statements each see the latest
    # commits, SQLite's read is one snapshot (the same mark again)
    "reading": {"read_changes": ("pruned_now",)},
    # the listener for other hub processes' commits: connected, heard, closed on PostgreSQL only
    "feed": {
        # (on SQLite the doorbell's _committed takes the place of signal.notify)
        "Feed.start": (
            "False -> True",
            "self.store.listen(",
            "feed notices not heard",
            "asyncpg.PostgresError) ->",
            "self.store.on_changes = self.signal.notify -> pass",
            "self.store.dialect == 'postgresql'",
        ),
        "Feed._heard": ("",),
        "Feed.stop": ("close_listener(",),
    },
    # the customer lock an erasure takes (a no-op on SQLite)
    # and the claim's row locks (FOR UPDATE SKIP LOCKED, which SQLite does not render)
    "outbox": {
        "Outbox.apply_callback.write": ("_lock_owner(",),
        "_lock_owner": ("",),
        "Outbox.claim.write": ("conn.dialect.name == 'postgresql'", "True -> False"),
    },
}
# the same, by key, where the description alone is ambiguous (a constant in PostgreSQL's branch)
POSTGRES_ONLY_KEYS: dict[str, frozenset[str]] = {
    # the queries PostgreSQL runs for erased requests (the second of each mutant) and a
    # customer's requests (the third), built once per database kind (SQLite's is the other key)
    "outbox": frozenset(
        {f"<module>: {m} #{n}" for m in ("(False, True) -> (False,)", "True -> False") for n in (2, 3)}
    ),
    # the value as jsonb renders it (not ASCII-escaped): on SQLite it is the value, already a needle
    "erasure": frozenset({"_scrub_claims: 0 -> 1 #3", "_scrub_claims: False -> True #1"}),
    # the scrubbing statement built for PostgreSQL left out (SQLite's is the other one)
    "writing": frozenset({"<module>: True -> False #1", "<module>: (False, True) -> (False,) #1"}),
    # the filtered page's query built for PostgreSQL left out (SQLite's is the other one), and
    # the page's last position beside the head: only PostgreSQL's reads see a commit that lands
    # between the head's statement and the page's (SQLite's read is one snapshot); and prune's
    # `rowcount or 0` -> `or 1`: only two PostgreSQL hubs pruning at once delete rows another
    # just deleted (on SQLite's one writer the rows deleted are those just found)
    "reading": frozenset(
        {
            "prune: 0 -> 1 #2",
            "<module>: True -> False #1",
            "<module>: (False, True) -> (False,) #1",
            "read_changes: 1 -> 0 #2",
            "read_changes: found[-1].seq if found else 0 -> 0 #1",
            # whether the read began from the oldest kept: only PostgreSQL's second look at the
            # mark, after the page, asks
            "read_changes: after is None -> after is not None #1",
            "read_changes: oldest -> not oldest #1",
            # the mark read again after the page on SQLite too: the same snapshot, the same mark
            "read_changes: conn.dialect.name == 'postgresql' -> conn.dialect.name != 'postgresql' #2",
            "read_changes: conn.dialect.name == 'postgresql' -> not conn.dialect.name == 'postgresql' #1",
        }
    ),
    # a claim's guards against another process claiming between its read and its update: on
    # SQLite the write transaction holds the lock from its start, and `IS 'owner'` compares as
    # `=` does (PostgreSQL refuses it)
    "relay": frozenset(
        {
            "Relay._claim: row.lease_owner is None -> row.lease_owner is not None #1",
            "Relay._claim: c.lease_owner.is_(row.lease_owner) if row.lease_owner is None else ... -> "
            "c.lease_owner.is_(row.lease_owner) #1",
            "Relay._claim: destination_cursors.update().where(c.name == dest.name, c.lease_own... -> "
            "destination_cursors.update().where(c.name == dest.name) #1",
            "Relay._claim: (int(row.position), row.pending_through) if taken else None -> "
            "(int(row.position), row.pending_through) #1",
        }
    ),
}


def postgres_only(mutant: Mutant) -> bool:
    if mutant.key in POSTGRES_ONLY_KEYS.get(mutant.module, frozenset()):
        return True
    words = POSTGRES_ONLY.get(mutant.module, {}).get(mutant.scope, ())
    return any(word in mutant.description for word in words)


_BOUNDARY: dict[type[ast.cmpop], list[type[ast.cmpop]]] = {
    ast.Eq: [ast.NotEq],
    ast.NotEq: [ast.Eq],
    ast.Lt: [ast.LtE, ast.GtE],
    ast.LtE: [ast.Lt, ast.Gt],
    ast.Gt: [ast.GtE, ast.LtE],
    ast.GtE: [ast.Gt, ast.Lt],
    ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is],
    ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
}

# SQL expressions (SQLAlchemy): a condition's opposite, and the calls that take conditions
_CALL_SWAPS = {"and_": "or_", "or_": "and_", "is_": "is_not", "is_not": "is_", "in_": "not_in", "not_in": "in_"}
_FILTERS = frozenset({"where", "filter", "and_", "or_"})


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int
    line: int
    scope: str
    description: str
    key: str


def _short(node: ast.AST) -> str:
    text = ast.unparse(node).splitlines()[0] if not isinstance(node, ast.Pass) else "pass"
    return text if len(text) <= 70 else text[:67] + "..."


class _Mutator(ast.NodeTransformer):
    """Walks a module; with ``target=None`` it lists the mutation sites, else it applies one."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.count = 0
        self.sites: list[tuple[int, str, str]] = []  # (line, scope, description)
        self.scope: list[str] = []

    def _site(self, node: ast.AST, mutated: ast.AST) -> bool:
        """Record a site; True when it is the one to apply."""
        index = self.count
        self.count += 1
        if self.target is None:
            self.sites.append(
                (getattr(node, "lineno", 0), ".".join(self.scope) or "<module>", f"{_short(node)} -> {_short(mutated)}")
            )
            return False
        return index == self.target

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.AST:
        self.scope.append(node.name)
        # decorators and annotations are not behaviour worth mutating: only the body
        node.body = [self.visit(stmt) for stmt in node.body]
        self.scope.pop()
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped  # type: ignore[assignment]

    def visit_Module(self, node: ast.Module) -> ast.AST:
        body = []
        for stmt in node.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                body.append(stmt)
            elif isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                body.append(stmt)
            else:
                body.append(self.visit(stmt))
        node.body = body
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_arguments(self, node: ast.arguments) -> ast.AST:
        return node  # defaults of parameters: left alone, like annotations

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        name = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        if name == "Literal":
            return node  # a type (an alias such as ``Status = Literal[...]``): nothing runs it
        return self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            for other in _BOUNDARY.get(type(op), []):
                mutated = ast.Compare(node.left, [*node.ops[:i], other(), *node.ops[i + 1 :]], node.comparators)
                if self._site(node, mutated):
                    return ast.copy_location(mutated, node)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        mutated = ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values)
        if self._site(node, mutated):
            return ast.copy_location(mutated, node)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._site(node, node.operand):
            return node.operand
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not):
            return node  # dropping that ``not`` is already a mutant
        negated = ast.UnaryOp(ast.Not(), node.test)
        if self._site(node.test, negated):
            node.test = ast.copy_location(negated, node.test)
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        for branch in (node.body, node.orelse):
            if self._site(node, branch):
                return branch
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            variants: list[Any] = [not value]
        elif isinstance(value, int | float):
            variants = [value + 1, value - 1] if value != 0 else [1]
        else:
            return node
        for variant in variants:
            mutated = ast.Constant(variant)
            if self._site(node, mutated):
                return ast.copy_location(mutated, node)
        return node

    def _drop_elements(self, node: ast.Set | ast.List | ast.Tuple) -> ast.AST:
        self.generic_visit(node)
        if len(node.elts) < 2 or not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
            return node
        if isinstance(node, ast.Tuple) and not all(isinstance(e, ast.Constant | ast.Tuple) for e in node.elts):
            return node  # a tuple of values (a return, an unpacking), not a table: dropping one only crashes
        for i in range(len(node.elts)):
            elts = [*node.elts[:i], *node.elts[i + 1 :]]
            mutated = ast.Set(elts) if isinstance(node, ast.Set) else type(node)(elts, ast.Load())
            if self._site(node, mutated):
                return ast.copy_location(mutated, node)
        return node

    visit_Set = visit_List = visit_Tuple = _drop_elements  # type: ignore[assignment]

    def _remove(self, node: ast.stmt) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return node  # a docstring
        if isinstance(node, ast.Assign) and not all(isinstance(t, ast.Attribute | ast.Subscript) for t in node.targets):
            return node  # a local name: removing it only raises NameError
        if self._site(node, ast.Pass()):
            return ast.copy_location(ast.Pass(), node)
        return node

    visit_Raise = visit_Expr = visit_AugAssign = visit_Assign = visit_Delete = _remove  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        if not isinstance(func, ast.Attribute):
            return node
        swapped = _CALL_SWAPS.get(func.attr)
        if swapped is not None:
            mutated = ast.Call(ast.Attribute(func.value, swapped, ast.Load()), node.args, node.keywords)
            if self._site(node, mutated):
                return ast.copy_location(mutated, node)
        if func.attr in _FILTERS and len(node.args) >= 2:
            for i in range(len(node.args)):  # a query loses one of its conditions
                mutated = ast.Call(func, [*node.args[:i], *node.args[i + 1 :]], node.keywords)
                if self._site(node, mutated):
                    return ast.copy_location(mutated, node)
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        node.body = [self.visit(stmt) for stmt in node.body]
        if isinstance(node.type, ast.Tuple) and len(node.type.elts) >= 2:
            for i in range(len(node.type.elts)):  # the handler catches one kind of error less
                narrowed = ast.Tuple([*node.type.elts[:i], *node.type.elts[i + 1 :]], ast.Load())
                if self._site(node.type, narrowed):
                    node.type = ast.copy_location(narrowed, node.type)
                    break
        return node

    def visit_Continue(self, node: ast.Continue) -> ast.AST:
        if self._site(node, ast.Break()):
            return ast.copy_location(ast.Break(), node)
        return node

    def visit_Break(self, node: ast.Break) -> ast.AST:
        if self._site(node, ast.Continue()):
            return ast.copy_location(ast.Continue(), node)
        return node


def mutants(name: str, source: str | None = None) -> list[Mutant]:
    path = MODULES[name][0]
    mutator = _Mutator()
    mutator.visit(ast.parse(source if source is not None else (ROOT / path).read_text(), path))
    seen: Counter[tuple[str, str]] = Counter()
    found = []
    for index, (line, scope, description) in enumerate(mutator.sites):
        seen[scope, description] += 1
        key = f"{scope}: {description} #{seen[scope, description]}"
        found.append(Mutant(name, index, line, scope, description, key))
    return found


def mutated_source(mutant: Mutant, source: str) -> str:
    path = MODULES[mutant.module][0]
    tree = _Mutator(target=mutant.index).visit(ast.parse(source, path))
    return ast.unparse(ast.fix_missing_locations(tree))


class _MutantFinder(importlib.abc.MetaPathFinder):
    """Serves the mutated source under the module's name and file (tracebacks point there)."""

    def __init__(self, fullname: str, path: str, source: str) -> None:
        self.fullname, self.path, self.source = fullname, path, source

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.fullname:
            return None
        source, filename = self.source, self.path

        class Loader(importlib.machinery.SourceFileLoader):
            def get_code(self, fullname: str) -> Any:
                return compile(source, filename, "exec", dont_inherit=True)

        return importlib.util.spec_from_file_location(fullname, filename, loader=Loader(fullname, filename))


def _run_tests(
    tests: list[str], mutant: Mutant | None, timeout: float, log: Path, source: str = ""
) -> tuple[str, float]:
    """("killed" | "survived" | "timeout" | "error", seconds) of one test run in a forked child."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            os.environ.pop("PRM_TEST_POSTGRES_URL", None)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if mutant is not None:
                path = MODULES[mutant.module][0]
                fullname = path.removesuffix(".py").replace("/", ".")
                sys.meta_path.insert(0, _MutantFinder(fullname, str(ROOT / path), mutated_source(mutant, source)))
            import pytest

            args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=", *tests]
            code = int(pytest.main(args))
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        took = time.monotonic() - started
        if done:
            code = os.waitstatus_to_exitcode(status)
            if mutant is None:
                return ("survived" if code == 0 else "error"), took
            return ("survived" if code == 0 else "killed"), took
        if took > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", took
        time.sleep(0.05)


@dataclass
class Result:
    module: str
    total: int = 0
    killed: int = 0
    equivalent: int = 0
    postgres_only: int = 0
    not_run: int = 0
    survivors: list[Mutant] = field(default_factory=list)
    baseline: float = 0.0

    @property
    def score(self) -> float | None:
        judged = self.total - self.equivalent - self.postgres_only - self.not_run
        return None if judged <= 0 else 100.0 * self.killed / judged


def _warm() -> None:
    """Import the heavy third-party libraries once, before forking (never the hub's own code)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no threads in the parent: forks stay safe
    for name in (
        "aiohttp", "sqlalchemy", "sqlalchemy.ext.asyncio", "aiosqlite", "asyncpg", "alembic", "attrs", "structlog",
        "pluggy", "phonenumbers", "rule_engine", "numpy", "scipy.optimize", "scipy.special", "babel", "lxml.etree",
        "sqlmodel", "hypothesis", "pytest", "pytest_aiohttp", "pytest_asyncio", "click", "tenacity", "limits",
        "prometheus_client", "twilio.request_validator", "standardwebhooks", "cloudevents", "aiobreaker",
    ):  # fmt: skip
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def run(
    names: list[str],
    *,
    budget: float,
    timeout_factor: float,
    logs: Path,
    only_keys: dict[str, set[str]] | None = None,
    lines: tuple[int, int] = (0, sys.maxsize),
) -> Iterator[Result]:
    deadline = time.monotonic() + budget
    for name in names:
        path, tests = MODULES[name][0], test_files(name)
        # read once: the mutants are made from this text even if the file is edited meanwhile
        source = (ROOT / path).read_text()
        found = mutants(name, source)
        if only_keys is not None:
            found = [m for m in found if m.key in only_keys.get(name, set())]
        found = [m for m in found if lines[0] <= m.line <= lines[1]]
        result = Result(name, total=len(found))
        equivalent = EQUIVALENT.get(name, {})
        status, result.baseline = _run_tests(tests, None, 3600, logs / f"{name}-baseline.log")
        print(f"{name}: {len(found)} mutants of {path}; unmutated tests ({' '.join(tests)}) {status} "
              f"in {result.baseline:.1f} s", flush=True)  # fmt: skip
        if status != "survived":
            print(f"{name}: the tests fail without a mutant, see {logs / f'{name}-baseline.log'}", flush=True)
            result.not_run = len(found)
            yield result
            continue
        timeout = max(10.0, timeout_factor * result.baseline + 5)
        for n, mutant in enumerate(found, 1):
            if n % 25 == 0:
                print(f"  {name}: {n}/{len(found)}", flush=True)
            if mutant.key in equivalent:
                result.equivalent += 1
                continue
            if postgres_only(mutant):
                result.postgres_only += 1
                continue
            if time.monotonic() > deadline:
                result.not_run += 1
                continue
            outcome, _ = _run_tests(tests, mutant, timeout, logs / f"{name}-mutant.log", source)
            if outcome == "survived":
                result.survivors.append(mutant)
                print(f"  survived  {path}:{mutant.line}  {mutant.key}", flush=True)
            else:
                result.killed += 1
        yield result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(MODULES), help=f"comma-separated, of: {', '.join(MODULES)}")
    parser.add_argument("--list", metavar="MODULE", help="print the mutants of one module and stop")
    parser.add_argument("--budget", type=float, default=3 * 3600, help="seconds; no mutant starts after (default 3 h)")
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="a mutant's time limit / unmutated run")
    parser.add_argument("--logs", default="/tmp/prm-mutation", help="each run's pytest output (the last one kept)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--rerun", metavar="JSON", help="run only the survivors listed in an earlier --json file")
    parser.add_argument("--lines", metavar="FIRST-LAST", help="only mutants on these lines (of each module run)")
    args = parser.parse_args()
    if args.list:
        for m in mutants(args.list):
            mark = "  (equivalent)" if m.key in EQUIVALENT.get(args.list, {}) else ""
            mark = "  (pg-only)" if postgres_only(m) else mark
            print(f"{MODULES[args.list][0]}:{m.line}  {m.key}{mark}")
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    only_keys = None
    if args.rerun:
        only_keys = {r["module"]: set(r["survivors"]) for r in json.loads(Path(args.rerun).read_text())}
        names = [n for n in names if n in only_keys]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    first, _, last = (args.lines or "0-").partition("-")
    lines = (int(first or 0), int(last) if last else sys.maxsize)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    _warm()
    results = list(
        run(names, budget=args.budget, timeout_factor=args.timeout_factor, logs=logs, only_keys=only_keys, lines=lines)
    )
    print(
        f"\n{'module':<10} {'mutants':>7} {'killed':>6} {'equiv.':>6} {'pg-only':>7} {'survived':>8} {'not run':>7} "
        f"{'score':>6}"
    )
    for r in results:
        score = "-" if r.score is None else f"{r.score:.0f}%"
        print(f"{r.module:<10} {r.total:>7} {r.killed:>6} {r.equivalent:>6} {r.postgres_only:>7} {len(r.survivors):>8} "
              f"{r.not_run:>7} {score:>6}")  # fmt: skip
    for r in results:
        for m in r.survivors:
            print(f"survivor  {MODULES[r.module][0]}:{m.line}  {m.key}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "module": r.module, "total": r.total, "killed": r.killed, "equivalent": r.equivalent,
                        "postgres_only": r.postgres_only,
                        "not_run": r.not_run, "score": r.score, "survivors": [m.key for m in r.survivors],
                    }
                    for r in results
                ],
                indent=2,
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
