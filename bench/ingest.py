#!/usr/bin/env python
"""Ingest throughput: the hub's ``POST /v1/touchpoints/web/events`` next to a bare aiohttp handler.

This script (the *driver*) starts three kinds of process and stays out of the way:

- **the hub**: :func:`prm_core.server.app.create_app` on a fresh SQLite file in a temporary
  directory, run as ``prm serve`` runs it (same logging set-up, level ``info``, one access-log
  line per request, to ``hub.log`` in that directory), with a ``touchpoint:web`` key made by
  :func:`prm_core.keys.create_key`;
- **the bare handler**: an aiohttp app whose handler does ``await request.json()`` and answers
  a tiny JSON object: what any aiohttp JSON endpoint pays before doing anything;
- **the load**: ``wrk`` with a generated Lua script when ``wrk`` is installed (it costs the
  2-core machine far less CPU than a Python client), else an aiohttp client (this file run
  with ``--role load``). 64 requests are in flight by default, so group commit can batch.

Each round loads the bare handler and then the hub at 1 event per request, then both at 100
events per request, then (``--segment``, on by default) the same hub process through the
Segment-compatible ``POST /v1/batch`` of ``contrib/prm_segment`` at 100 messages per call: the
same key (HTTP Basic, as the Segment SDKs send it) and the same mix, each event translated into
a Segment message. Each load run warms up for ``--warmup`` seconds and is then measured over a
window of ``--duration`` whole seconds: requests answered 200 with ``"accepted": <batch size>,
"duplicates": 0`` (Segment: ``{"success": true}``) inside the window count; anything else
anywhere in the run is an error. Server, client and machine CPU are sampled at the window's
edges, so a busy machine shows as ``other``. With ``--hub-diagnostics`` (on by default) the hub
also counts its writer's commits, statements and time through SQLAlchemy engine events and
probes its event loop's lag; a ``writer:`` line under each hub (and Segment) phase shows them.

Events follow ``--mix``: ``web`` (default) is page views and product views by known customers
(an email from a pool of ``--customers``, so identities repeat), anonymous page views, logins
(``identify`` with the anonymous id and the email: they link, and merge when both already have
a customer) and orders with revenue; ``known`` leaves out anonymous ids, hence merges.

Printed: events/s per phase and, in the summary, medians over rounds; the ratio of the hub's
rate to the bare handler's at 1 event per request; the ratio of the Segment rate to the hub's
own at 100 events per request; the hub's peak RSS (``VmHWM``); each next to its target. Timing
is never asserted.

With ``--journal`` the hub runs with ``[ingest] journal = true``: its events/s are then the
*acceptance* rate (acknowledged once journaled), and each hub phase also reports the
*processing* rate (the processor's progress through the journal inside the window, read from
``/healthz``), the processor's lag (sampled every quarter second: maximum and at the window's
end) and how long the backlog took to drain after the load stopped (the next phase starts
only then). The summary gives both rates as ratios against the bare handler.

Run ``python bench/ingest.py`` (about 3.5 minutes) or ``python bench/ingest.py --quick`` (~30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EVENTS_PATH = "/v1/touchpoints/web/events"
SEGMENT_PATH = "/v1/batch"  # contrib/prm_segment, on the same hub
SEGMENT_BATCH = 100  # messages per /v1/batch call
BATCH_SIZES = (1, 100)  # the summary reports these
TARGET_RATIO = 0.50  # hub / bare handler, 1 event per request
TARGET_BATCH_RATE = 20_000.0  # events/s at 100 events per request
TARGET_RSS_MB = 300.0  # hub peak RSS
TARGET_HANDWRITTEN_RATIO = 3.0  # hub / the hand-written FastAPI + SQLModel endpoint, 100 events per request
TARGET_SEGMENT_RATIO = 0.80  # Segment /v1/batch / the hub's own events endpoint, 100 events per request
APIS = ("hub", "segment")  # what a load run posts: the hub's events endpoint or Segment batches

# event mixes: (kind, share) in a fixed kind order; the Python and Lua generators render kinds alike
KINDS = ("page", "product", "anonymous", "identify", "order")
MIXES: dict[str, tuple[float, ...]] = {
    # page view by a known customer (email), product.viewed, page view before login (anonymous_id
    # only), login (anonymous_id + email: links, and merges when both already have a customer),
    # order.completed with revenue
    "web": (0.70, 0.10, 0.10, 0.05, 0.05),
    # known customers only: no anonymous ids, so no merges (separates their cost out)
    "known": (0.80, 0.15, 0.0, 0.0, 0.05),
}
ANONYMOUS_IDS_PER_CUSTOMER = 2


def _thresholds(mix: str) -> list[float]:
    """Cumulative shares of a mix, for drawing a kind from one uniform number."""
    total, out = 0.0, []
    for share in MIXES[mix]:
        total += share
        out.append(total)
    return out


# ---- event generation (Python client) --------------------------------------------------------


def rfc3339_now() -> str:
    """The current UTC time as RFC 3339 with millisecond precision and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventFactory:
    """Generates request bodies with unique event ids and identities drawn from a customer pool."""

    def __init__(self, tag: str, customers: int, seed: int, mix: str = "web") -> None:
        self.tag = tag
        self.customers = customers
        self.rng = random.Random(seed)
        self.seq = 0
        self.cumulative = _thresholds(mix)

    def event(self, now: str) -> dict[str, Any]:
        """One event of the mix."""
        self.seq += 1
        rng = self.rng
        eid = f"{self.tag}-{self.seq}"
        c = rng.randrange(self.customers)
        email = f"user{c}@example.com"
        anon = f"anon-{c}-{rng.randrange(ANONYMOUS_IDS_PER_CUSTOMER)}"
        r = rng.random()
        kind = next((k for k, t in zip(KINDS, self.cumulative, strict=True) if r < t), KINDS[-1])
        base: dict[str, Any] = {"id": eid, "occurred_at": now}
        if kind == "page":
            return {**base, "type": "page", "identities": {"email": email}, "data": {"url": f"/products/{c % 500}"}}
        if kind == "product":
            return {
                **base,
                "type": "product.viewed",
                "identities": {"email": email},
                "data": {"product_id": f"sku-{rng.randrange(2000)}"},
            }
        if kind == "anonymous":
            return {**base, "type": "page", "identities": {"anonymous_id": anon}, "data": {"url": "/"}}
        if kind == "identify":
            return {**base, "type": "identify", "identities": {"anonymous_id": anon, "email": email}}
        return {
            **base,
            "type": "order.completed",
            "identities": {"email": email},
            "data": {"order_id": eid, "revenue": round(rng.uniform(5, 300), 2), "currency": "USD"},
        }

    def segment_message(self, now: str) -> dict[str, Any]:
        """One event of the mix as a Segment message, as :data:`SEGMENT_LUA_EVENT` renders it.

        The email of a known customer becomes ``userId`` ``user-<n>`` and the anonymous ids are
        drawn from a pool of their own (``seg-anon-``), so Segment phases grow a customer
        population of their own next to the one the hub phases grow: the two do not merge.
        """
        self.seq += 1
        rng = self.rng
        mid = f"{self.tag}-{self.seq}"
        c = rng.randrange(self.customers)
        user = f"user-{c}"
        anon = f"seg-anon-{c}-{rng.randrange(ANONYMOUS_IDS_PER_CUSTOMER)}"
        r = rng.random()
        kind = next((k for k, t in zip(KINDS, self.cumulative, strict=True) if r < t), KINDS[-1])
        base: dict[str, Any] = {"messageId": mid, "timestamp": now}
        if kind == "page":
            return {**base, "type": "page", "userId": user, "properties": {"url": f"/products/{c % 500}"}}
        if kind == "product":
            return {
                **base,
                "type": "track",
                "event": "Product Viewed",
                "userId": user,
                "properties": {"product_id": f"sku-{rng.randrange(2000)}"},
            }
        if kind == "anonymous":
            return {**base, "type": "page", "anonymousId": anon, "properties": {"url": "/"}}
        if kind == "identify":
            return {**base, "type": "identify", "anonymousId": anon, "userId": user}
        return {
            **base,
            "type": "track",
            "event": "Order Completed",
            "userId": user,
            "properties": {"order_id": mid, "revenue": round(rng.uniform(5, 300), 2), "currency": "USD"},
        }

    def body(self, batch: int, api: str = "hub") -> bytes:
        """A request body of ``batch`` events: ``{"events": [...]}``, or ``{"batch": [...]}`` for Segment."""
        now = rfc3339_now()
        if api == "segment":
            return json.dumps({"batch": [self.segment_message(now) for _ in range(batch)]}).encode()
        return json.dumps({"events": [self.event(now) for _ in range(batch)]}).encode()


# ---- event generation (wrk) -------------------------------------------------------------------

LUA_TEMPLATE = string.Template(r"""-- generated by bench/ingest.py; one request = $batch event(s) ($api)
local batch = $batch
local customers = $customers
local anon_per_customer = $anon
local tag = "$tag"
local window_from, window_to = $window_from, $window_to -- epoch seconds [from, to)
local expected = $expected
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "$authorization"

local threads = {}
local next_tid = 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

seq = 0
ok = 0       -- answered 200 with the expected body, inside the window
non200 = 0   -- anywhere in the run
badbody = 0  -- anywhere in the run
function init(args)
  math.randomseed(tid * 7919 + os.time())
end

$event_function
function request()
  local t = os.time()
  local now = os.date("!%Y-%m-%dT%H:%M:%SZ", t)
  local parts = {}
  for i = 1, batch do parts[i] = event(now) end
  return wrk.format(nil, nil, nil, '{"$envelope":[' .. table.concat(parts, ",") .. ']}')
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  elseif not string.find(body, expected) then
    badbody = badbody + 1
  else
    local now = os.time()
    if now >= window_from and now < window_to then ok = ok + 1 end
  end
end

function done(summary, latency, requests)
  local o, n, b = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    n = n + t:get("non200")
    b = b + t:get("badbody")
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {"ok":%d,"requests":%d,"non200":%d,"bad_body":%d,'
    .. '"socket_errors":%d,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    o, summary.requests, n, b, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
""")

# the event() function of the wrk script, per API; $t_<kind> are the mix's cumulative shares
HUB_LUA_EVENT = string.Template(r"""local function event(now)
  seq = seq + 1
  local id = tag .. "-" .. tid .. "-" .. seq
  local c = math.random(0, customers - 1)
  local anon = "anon-" .. c .. "-" .. math.random(0, anon_per_customer - 1)
  local r = math.random()
  if r < $t_page then
    return string.format('{"id":"%s","type":"page","occurred_at":"%s","identities":{"email":"user%d@example.com"},'
      .. '"data":{"url":"/products/%d"}}', id, now, c, c % 500)
  elseif r < $t_product then
    return string.format('{"id":"%s","type":"product.viewed","occurred_at":"%s",'
      .. '"identities":{"email":"user%d@example.com"},"data":{"product_id":"sku-%d"}}',
      id, now, c, math.random(0, 1999))
  elseif r < $t_anonymous then
    return string.format('{"id":"%s","type":"page","occurred_at":"%s","identities":{"anonymous_id":"%s"},'
      .. '"data":{"url":"/"}}', id, now, anon)
  elseif r < $t_identify then
    return string.format('{"id":"%s","type":"identify","occurred_at":"%s",'
      .. '"identities":{"anonymous_id":"%s","email":"user%d@example.com"}}', id, now, anon, c)
  else
    return string.format('{"id":"%s","type":"order.completed","occurred_at":"%s",'
      .. '"identities":{"email":"user%d@example.com"},"data":{"order_id":"%s","revenue":%.2f,"currency":"USD"}}',
      id, now, c, id, 5 + math.random() * 295)
  end
end
""")
SEGMENT_LUA_EVENT = string.Template(r"""local function event(now)
  seq = seq + 1
  local id = tag .. "-" .. tid .. "-" .. seq
  local c = math.random(0, customers - 1)
  local anon = "seg-anon-" .. c .. "-" .. math.random(0, anon_per_customer - 1)
  local r = math.random()
  if r < $t_page then
    return string.format('{"type":"page","messageId":"%s","timestamp":"%s","userId":"user-%d",'
      .. '"properties":{"url":"/products/%d"}}', id, now, c, c % 500)
  elseif r < $t_product then
    return string.format('{"type":"track","event":"Product Viewed","messageId":"%s","timestamp":"%s",'
      .. '"userId":"user-%d","properties":{"product_id":"sku-%d"}}', id, now, c, math.random(0, 1999))
  elseif r < $t_anonymous then
    return string.format('{"type":"page","messageId":"%s","timestamp":"%s","anonymousId":"%s",'
      .. '"properties":{"url":"/"}}', id, now, anon)
  elseif r < $t_identify then
    return string.format('{"type":"identify","messageId":"%s","timestamp":"%s","anonymousId":"%s",'
      .. '"userId":"user-%d"}', id, now, anon, c)
  else
    return string.format('{"type":"track","event":"Order Completed","messageId":"%s","timestamp":"%s",'
      .. '"userId":"user-%d","properties":{"order_id":"%s","revenue":%.2f,"currency":"USD"}}',
      id, now, c, id, 5 + math.random() * 295)
  end
end
""")
LUA_EXPECTED = {
    # Lua patterns matched against the answer of a counted request
    "hub": """'"accepted":%s*' .. batch .. '%s*,%s*"duplicates":%s*0%s*[,}]'""",  # then "position" (--journal)
    "segment": """'^%s*{%s*"success"%s*:%s*true%s*}%s*$'""",
}


def authorization(key: str, api: str) -> str:
    """The Authorization header: Bearer for the hub's API, Basic with the key as user name for Segment."""
    if api == "segment":
        return "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    return f"Bearer {key}"


def lua_script(
    batch: int, customers: int, tag: str, key: str, window: tuple[int, int], mix: str = "web", api: str = "hub"
) -> str:
    """The wrk script generating the same mix as :class:`EventFactory`, counting successes inside ``window``."""
    t = _thresholds(mix)
    shares = {f"t_{name}": f"{t[i]:.6f}" for i, name in enumerate(KINDS[:-1])}
    event_function = (SEGMENT_LUA_EVENT if api == "segment" else HUB_LUA_EVENT).substitute(shares)
    return LUA_TEMPLATE.substitute(
        batch=batch,
        api=api,
        customers=customers,
        anon=ANONYMOUS_IDS_PER_CUSTOMER,
        tag=tag,
        authorization=authorization(key, api),
        expected=LUA_EXPECTED[api],
        envelope="batch" if api == "segment" else "events",
        event_function=event_function,
        window_from=window[0],
        window_to=window[1],
    )


# ---- the server roles --------------------------------------------------------------------------


@dataclass
class WriterStats:
    """Cumulative figures of the hub's writer, collected inside the hub process (``--hub-diagnostics``)."""

    commits: int = 0
    rollbacks: int = 0  # write transactions rolled back (a failed batch, a retry)
    events: int = 0  # rows inserted into the event log by committed transactions
    statements: int = 0
    txn_seconds: float = 0.0  # BEGIN to COMMIT, summed
    sql_seconds: float = 0.0  # inside cursor execution (the hop to aiosqlite's thread too, where there is one)
    lag_probes: int = 0
    lag_seconds: float = 0.0  # event-loop lag: how late a 10 ms sleep wakes up, summed
    lag_max_seconds: float = 0.0


def attach_diagnostics(app: Any) -> None:
    """Count the writer's commits, statements and time, and probe event-loop lag, in the hub process.

    Uses only public hooks (SQLAlchemy engine events on the hub's writer engine and an extra
    ``cleanup_ctx``); the figures are served on ``GET /_bench/stats`` for the driver to diff.
    """
    from aiohttp import web
    from sqlalchemy import event

    from prm_core.server.state import HUB

    stats = WriterStats()

    async def serve_stats(request: web.Request) -> web.Response:
        return web.json_response(asdict(stats))

    def on_begin(conn: Any) -> None:
        conn.info["bench_begin"] = time.perf_counter()
        conn.info["bench_events"] = 0

    def on_commit(conn: Any) -> None:
        started = conn.info.pop("bench_begin", None)
        if started is not None:
            stats.commits += 1
            stats.txn_seconds += time.perf_counter() - started
            stats.events += conn.info.pop("bench_events", 0)

    def on_rollback(conn: Any) -> None:
        started = conn.info.pop("bench_begin", None)
        conn.info.pop("bench_events", None)
        if started is not None:
            stats.rollbacks += 1
            stats.txn_seconds += time.perf_counter() - started

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info["bench_statement"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        stats.statements += 1
        stats.sql_seconds += time.perf_counter() - conn.info.pop("bench_statement", time.perf_counter())
        if statement.lstrip().upper().startswith("INSERT INTO EVENTS") and "bench_events" in conn.info:
            conn.info["bench_events"] += len(parameters) if executemany else 1

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(0.01)
            lag = max(0.0, loop.time() - started - 0.01)
            stats.lag_probes += 1
            stats.lag_seconds += lag
            stats.lag_max_seconds = max(stats.lag_max_seconds, lag)

    async def diagnostics(app: web.Application) -> Any:
        store = app[HUB].store
        # SQLite runs each write transaction on a plain sqlite3 engine in a worker thread
        # (Store.sync_writer); other databases on the async writer engine
        engine = store.sync_writer if getattr(store, "sync_writer", None) is not None else store.writer.sync_engine
        listeners: list[tuple[str, Callable[..., Any]]] = [
            ("begin", on_begin),
            ("commit", on_commit),
            ("rollback", on_rollback),
            ("before_cursor_execute", before),
            ("after_cursor_execute", after),
        ]
        for name, fn in listeners:
            event.listen(engine, name, fn)
        task = asyncio.create_task(probe())
        yield
        task.cancel()
        for name, fn in listeners:
            event.remove(engine, name, fn)

    app.router.add_get("/_bench/stats", serve_stats)
    app.cleanup_ctx.append(diagnostics)


def serve_hub(
    database_url: str,
    port: int,
    log_level: str,
    profile: str | None,
    diagnostics: bool,
    identity_rules: str = "on",
    feed: bool = True,
    journal: bool = False,
    processors: int = 0,
) -> None:
    """Run the hub as ``prm serve`` does: logging set up, every installed plugin, until SIGTERM.

    ``identity_rules``: ``on`` (the defaults), ``limited`` (the defaults and ``[identity.rules.email]
    limit = 1``, so that the mix's logins, which give an anonymous visitor an email, check the
    limit) or ``off`` (no rule at all: what the hub costs without them).
    ``feed=False``: with ``[feed] enabled = false``, no change records (the ``hub-nofeed`` server)."""
    from aiohttp import web

    from prm_core.config import Config
    from prm_core.identity_rules import IdentityRules
    from prm_core.logs import configure_logging
    from prm_core.server.app import create_app

    configure_logging(log_level, cache=True)  # as prm serve does: loggers keep their configuration
    raw: dict[str, Any] = {} if feed else {"feed": {"enabled": False}}
    raw["ingest"] = {"journal": journal}  # without --journal: the direct path, recorded before the 2xx
    children: list[subprocess.Popen[bytes]] = []
    if journal and processors:
        # as prm serve --processors N: the journal processed by `prm process` children
        config_file = Path(tempfile.mkdtemp(prefix="prm-bench-processor-")) / "prm.toml"
        config_file.write_text("[ingest]\njournal = true\n" + ("" if feed else "[feed]\nenabled = false\n"))
        argv = [sys.executable, "-m", "prm_core.cli", "process", "--config", str(config_file)]
        argv += ["--database", database_url, "--log-level", log_level]
        children = [subprocess.Popen(argv) for _ in range(processors)]
    if identity_rules == "limited":
        raw["identity"] = {"rules": {"email": {"limit": 1}}}
    elif identity_rules == "off":
        IdentityRules.from_config = classmethod(lambda cls, *a, **k: None)  # type: ignore[method-assign,assignment]
    config = Config(database_url=database_url, raw=raw)
    app = create_app(config, owns_process=True, journal_processor="elsewhere" if children else "here")
    if diagnostics:
        attach_diagnostics(app)
    if profile is None:
        try:
            web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
        finally:
            for child in children:
                child.terminate()
                child.wait()
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def serve_bare(port: int) -> None:
    """The floor: an aiohttp handler that parses the JSON body and answers a tiny JSON object."""
    from aiohttp import web

    async def events(request: web.Request) -> web.Response:
        body = await request.json()
        n = len(body["events"]) if isinstance(body, dict) and isinstance(body.get("events"), list) else 1
        return web.json_response({"accepted": n, "duplicates": 0})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/v1/touchpoints/{tp}/events", events)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---- the Python load generator -----------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def python_load(
    url: str,
    key: str,
    batch: int,
    concurrency: int,
    window: tuple[float, float],
    tag: str,
    customers: int,
    seed: int,
    mix: str,
    api: str = "hub",
) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight until ``window`` (epoch seconds) ends.

    Successes are counted inside the window only, errors over the whole run: the same
    figures the wrk script gives.
    """
    import aiohttp

    factory = EventFactory(tag, customers, seed, mix)
    headers = {"Authorization": authorization(key, api), "Content-Type": "application/json"}
    latencies: list[float] = []
    counts = {"ok": 0, "requests": 0, "non200": 0, "bad_body": 0, "socket_errors": 0}
    window_from, window_to = window
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            while time.time() < window_to:
                body = factory.body(batch, api)
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        payload = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    counts["socket_errors"] += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                counts["requests"] += 1
                if status != 200:
                    counts["non200"] += 1
                    continue
                try:
                    answer = json.loads(payload)
                except ValueError:
                    answer = None
                if api == "segment":
                    good = answer == {"success": True}
                else:
                    good = isinstance(answer, dict) and (answer.get("accepted"), answer.get("duplicates")) == (batch, 0)
                if not good:
                    counts["bad_body"] += 1
                elif window_from <= time.time() < window_to:
                    counts["ok"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {**counts, "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


# ---- the driver ----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from ``/proc``."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, name: str) -> int:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every core, every process), from ``/proc/stat``."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A server process started by the driver."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    diagnostics: bool = False

    def stats(self) -> dict[str, float] | None:
        """The hub's cumulative :class:`WriterStats`, when it runs with diagnostics."""
        if not self.diagnostics:
            return None
        try:
            with urllib.request.urlopen(self.base_url + "/_bench/stats", timeout=30) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):  # a hub that died or hangs: the load run reports the errors
            return None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/healthz`` until it answers 200; on failure show the log tail and exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        sys.exit(f"{self.name} did not start (exit code {self.proc.poll()}); log {self.log}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM (a graceful stop for aiohttp), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def start_server(
    name: str, argv: list[str], port: int, workdir: Path, *, diagnostics: bool = False
) -> Iterator[Server]:
    """Start this file with a server ``--role``; stop it on exit."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *argv, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(name, port, proc, log, diagnostics)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Phase:
    """One measured window of load against one server."""

    round: int
    server: str
    batch: int
    ok: int  # requests answered 200 with the expected body inside the window
    errors: int  # non-200, wrong body or socket errors, over the whole run (warm-up included)
    duration_s: float  # the window
    p50_ms: float  # request latency over the whole run (warm-up included)
    p99_ms: float
    server_cpu: float  # cores used inside the window
    client_cpu: float
    other_cpu: float  # cores used by everything else on the machine (noise)
    writer: dict[str, float] | None = None  # the hub's WriterStats inside the window (differences)
    # --journal: the processor inside the window (events/s), its lag (max of samples, at the
    # window's end) and the seconds the backlog took to drain once the load stopped
    processed_per_s: float | None = None
    lag_max_s: float | None = None
    lag_end_s: float | None = None
    drain_s: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.ok * self.batch / self.duration_s if self.duration_s else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def events_per_cpu_s(self) -> float:
        """Events per CPU-second of the server: less sensitive to a busy machine than events/s."""
        return self.events_per_s / self.server_cpu if self.server_cpu else 0.0


@dataclass
class LoadSettings:
    """How the load is generated."""

    client: str  # "wrk" or "python"
    concurrency: int
    customers: int
    key: str
    workdir: Path
    wrk_threads: int
    mix: str = "web"
    runs: int = field(default=0)


def start_load(
    settings: LoadSettings, url: str, batch: int, window: tuple[int, int], api: str = "hub"
) -> subprocess.Popen[str]:
    """Start one load process that runs until one second past ``window`` (epoch seconds)."""
    settings.runs += 1
    tag = f"r{os.getpid()}x{settings.runs}x{int(time.time())}"
    run_seconds = max(1, math.ceil(window[1] + 1 - time.time()))
    if settings.client == "wrk":
        script = settings.workdir / f"load-{settings.runs}.lua"
        script.write_text(lua_script(batch, settings.customers, tag, settings.key, window, settings.mix, api))
        argv = [
            "wrk",
            f"-t{settings.wrk_threads}",
            f"-c{settings.concurrency}",
            f"-d{run_seconds}s",
            "--timeout",
            "60s",
            "-s",
            str(script),
            url,
        ]
    else:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            "load",
            "--url",
            url,
            "--key",
            settings.key,
            "--batch",
            str(batch),
            "--concurrency",
            str(settings.concurrency),
            "--window",
            f"{window[0]},{window[1]}",
            "--tag",
            tag,
            "--customers",
            str(settings.customers),
            "--mix",
            settings.mix,
            "--api",
            api,
        ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_load(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a load process and return its JSON figures."""
    out, err = proc.communicate()
    for line in out.splitlines():
        for marker in ("WRKJSON ", "LOADJSON "):
            if line.startswith(marker):
                return dict(json.loads(line[len(marker) :]))
    sys.exit(f"the load run failed (exit code {proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")


def sleep_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))


def measure(
    settings: LoadSettings, server: Server, batch: int, duration: int, warmup: float, rnd: int, api: str = "hub"
) -> Phase:
    """One load run: ``warmup`` seconds, then a window of ``duration`` whole seconds that is measured.

    ``api="segment"`` posts Segment batches to the hub's ``/v1/batch``; the phase is named ``segment``.
    """
    url = server.base_url + (SEGMENT_PATH if api == "segment" else EVENTS_PATH)
    window_from = math.ceil(time.time() + warmup)
    window = (window_from, window_from + duration)
    load = start_load(settings, url, batch, window, api)
    sleep_until(window[0])
    stats0 = server.stats()
    journal0 = journal_state(server)
    cpu0, client0, busy0, t0 = cpu_seconds(server.proc.pid), cpu_seconds(load.pid), machine_busy(), time.monotonic()
    lags: list[float] = []
    if journal0 is None:
        sleep_until(window[1])
    else:
        while time.time() < window[1] - 0.25:
            time.sleep(0.25)
            state = journal_state(server)
            if state is not None:
                lags.append(state["lag_s"])
        sleep_until(window[1])
    cpu1, client1, busy1, wall = cpu_seconds(server.proc.pid), cpu_seconds(load.pid), machine_busy(), time.monotonic()
    journal1 = journal_state(server)
    stats1 = server.stats()
    wall -= t0
    figures = finish_load(load)
    journal: dict[str, float | None] = {}
    if journal0 is not None and journal1 is not None:
        lags.append(journal1["lag_s"])
        journal = {
            "processed_per_s": (journal1["processed"] - journal0["processed"]) / wall,
            "lag_max_s": max(lags),
            "lag_end_s": journal1["lag_s"],
            "drain_s": drain(server),
        }
    writer = None
    if stats0 is not None and stats1 is not None:
        writer = {k: stats1[k] - stats0[k] for k in stats1 if k != "lag_max_seconds"}
        writer["lag_max_seconds"] = stats1["lag_max_seconds"]  # the maximum since the hub started
        writer["wall_seconds"] = wall
    server_cpu, client_cpu = cpu1 - cpu0, client1 - client0
    return Phase(
        round=rnd,
        server="segment" if api == "segment" else server.name,
        batch=batch,
        ok=int(figures["ok"]),
        errors=int(figures["non200"]) + int(figures["bad_body"]) + int(figures["socket_errors"]),
        duration_s=float(duration),
        p50_ms=float(figures["p50_ms"]),
        p99_ms=float(figures["p99_ms"]),
        server_cpu=server_cpu / wall,
        client_cpu=client_cpu / wall,
        other_cpu=max(0.0, (busy1 - busy0) - server_cpu - client_cpu) / wall,
        writer=writer,
        **journal,  # type: ignore[arg-type]
    )


def journal_state(server: Server) -> dict[str, float] | None:
    """The hub's journal from ``/healthz`` (processed position, depth, lag); None without one."""
    try:
        with urllib.request.urlopen(server.base_url + "/healthz", timeout=30) as resp:
            journal = json.loads(resp.read()).get("journal")
    except (OSError, ValueError):
        return None
    if not journal:
        return None
    return {"processed": float(journal["processed"]), "depth": float(journal["depth"]), "lag_s": journal["lag_s"]}


def drain(server: Server, timeout: float = 600.0) -> float | None:
    """Seconds until the journal's depth is 0 (the load has stopped); None if it never is."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = journal_state(server)
        if state is not None and state["depth"] == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


async def create_web_key(database_url: str) -> str:
    """Migrate the empty database and create a ``touchpoint:web`` key, as ``prm keys create`` does."""
    from prm_core.keys import create_key
    from prm_core.store import Store

    store = Store.open(database_url)
    try:
        await store.migrate()
        key, _ = await create_key(store, "touchpoint:web", name="bench")
    finally:
        await store.dispose()
    return key


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_row(p: Phase) -> None:
    print(
        f"round {p.round}  {p.server:<7} {p.batch:>3} ev/req  {p.events_per_s:>10,.0f} events/s"
        f"  {p.requests_per_s:>8,.0f} req/s  p50 {p.p50_ms:>7.1f} ms  p99 {p.p99_ms:>7.1f} ms"
        f"  errors {p.errors:>4}  cpu: server {p.server_cpu:>4.0%} client {p.client_cpu:>4.0%}"
        f" other {p.other_cpu:>4.0%}",
        flush=True,
    )
    w = p.writer
    if w and w["commits"]:
        commits = w["commits"]
        print(
            f"{'':>29}writer busy {w['txn_seconds'] / w['wall_seconds']:.0%}:"
            f" {commits / w['wall_seconds']:,.1f} commits/s, {w['events'] / commits:,.0f} events"
            f" and {w['statements'] / commits:.0f} statements per commit, {1000 * w['txn_seconds'] / commits:.1f} ms"
            f" per commit ({w['sql_seconds'] / max(w['txn_seconds'], 1e-9):.0%} of it in SQL statements);"
            f" event-loop lag mean {1000 * w['lag_seconds'] / max(w['lag_probes'], 1):.1f} ms"
            + (f"; {w['rollbacks']:.0f} rolled back" if w.get("rollbacks") else ""),
            flush=True,
        )
    if p.processed_per_s is not None:
        drained = f"{p.drain_s:.1f} s" if p.drain_s is not None else "not within 10 minutes"
        print(
            f"{'':>29}journal: accepted {p.events_per_s:,.0f} events/s, processed {p.processed_per_s:,.0f} events/s;"
            f" lag max {p.lag_max_s:.2f} s, at the window's end {p.lag_end_s:.2f} s; backlog drained in {drained}",
            flush=True,
        )


def summarize(phases: list[Phase]) -> dict[str, Any]:
    """Medians over rounds per (server, batch), the per-round hub/bare ratios at 1 event/request, the
    per-round Segment/hub ratios at 100 events/request, errors."""
    out: dict[str, Any] = {}
    for server in ("bare", "hub", "segment", "handwritten", "hub-nofeed"):
        for batch in BATCH_SIZES:
            rates = [p.events_per_s for p in phases if p.server == server and p.batch == batch]
            out[f"{server}_{batch}"] = statistics.median(rates) if rates else None
    hub1 = [p for p in phases if p.server == "hub" and p.batch == 1]
    bare1 = {p.round: p for p in phases if p.server == "bare" and p.batch == 1}
    ratios = [h.events_per_s / bare1[h.round].events_per_s for h in hub1 if bare1.get(h.round, None)]
    out["ratios_1"] = list(ratios)
    out["ratio_1"] = statistics.median(ratios) if ratios else None
    cpu_ratios = [
        h.events_per_cpu_s / bare1[h.round].events_per_cpu_s
        for h in hub1
        if bare1.get(h.round, None) and bare1[h.round].events_per_cpu_s
    ]
    out["ratio_1_per_cpu_s"] = statistics.median(cpu_ratios) if cpu_ratios else None
    segment = [p for p in phases if p.server == "segment" and p.batch == SEGMENT_BATCH]
    hub_b = {p.round: p for p in phases if p.server == "hub" and p.batch == SEGMENT_BATCH}
    seg_ratios = [s.events_per_s / hub_b[s.round].events_per_s for s in segment if hub_b.get(s.round, None)]
    out["ratios_segment"] = list(seg_ratios)
    out["ratio_segment"] = statistics.median(seg_ratios) if seg_ratios else None
    seg_cpu_ratios = [
        s.events_per_cpu_s / hub_b[s.round].events_per_cpu_s
        for s in segment
        if hub_b.get(s.round, None) and hub_b[s.round].events_per_cpu_s
    ]
    out["ratio_segment_per_cpu_s"] = statistics.median(seg_cpu_ratios) if seg_cpu_ratios else None
    for batch in BATCH_SIZES:
        hw = {p.round: p for p in phases if p.server == "handwritten" and p.batch == batch}
        hub_rates = [p for p in phases if p.server == "hub" and p.batch == batch]
        hw_ratios = [
            h.events_per_s / hw[h.round].events_per_s for h in hub_rates if h.round in hw and hw[h.round].events_per_s
        ]
        out[f"ratio_handwritten_{batch}"] = statistics.median(hw_ratios) if hw_ratios else None
    for batch in BATCH_SIZES:  # the change feed's cost: the hub with it over the hub without, per round
        nofeed = {p.round: p for p in phases if p.server == "hub-nofeed" and p.batch == batch}
        feed_ratios = [
            h.events_per_s / nofeed[h.round].events_per_s
            for h in phases
            if h.server == "hub" and h.batch == batch and h.round in nofeed and nofeed[h.round].events_per_s
        ]
        out[f"ratio_feed_{batch}"] = statistics.median(feed_ratios) if feed_ratios else None
    for batch in BATCH_SIZES:  # --journal: the processor's rate, and both rates over the bare handler's
        hub_phases = [p for p in phases if p.server == "hub" and p.batch == batch and p.processed_per_s is not None]
        if not hub_phases:
            continue
        bare = {p.round: p for p in phases if p.server == "bare" and p.batch == batch}
        out[f"processed_{batch}"] = statistics.median(p.processed_per_s or 0.0 for p in hub_phases)
        out[f"lag_max_{batch}"] = max(p.lag_max_s or 0.0 for p in hub_phases)
        drains = [p.drain_s for p in hub_phases if p.drain_s is not None]
        out[f"drain_{batch}"] = max(drains) if drains else None
        accepted = [h.events_per_s / bare[h.round].events_per_s for h in hub_phases if bare.get(h.round)]
        processed = [(h.processed_per_s or 0.0) / bare[h.round].events_per_s for h in hub_phases if bare.get(h.round)]
        out[f"ratio_accepted_{batch}"] = statistics.median(accepted) if accepted else None
        out[f"ratio_processed_{batch}"] = statistics.median(processed) if processed else None
    out["errors"] = sum(p.errors for p in phases)
    return out


def render_summary(summary: dict[str, Any], rounds: int, rss_idle_mb: float, rss_end_mb: float) -> str:
    """The summary block: figures with their targets."""

    def rate(name: str) -> str:
        value = summary.get(name)
        return f"{value:>10,.0f} events/s" if value is not None else f"{'-':>10}         "

    ratio, hub100, peak = summary["ratio_1"], summary["hub_100"], summary["hub_peak_rss_mb"]
    per_round = ", ".join(f"{r:.2f}" for r in summary["ratios_1"])
    seg_ratio = summary.get("ratio_segment")
    seg_per_round = ", ".join(f"{r:.2f}" for r in summary.get("ratios_segment", []))
    lines = [
        f"\nsummary (median of {rounds} round(s); errors = non-200, wrong answer or socket error)",
        f"  bare handler,   1 event/request   {rate('bare_1')}",
        f"  hub,            1 event/request   {rate('hub_1')}",
        f"  hub / bare,     1 event/request   {ratio:>10.2f}          target >= {TARGET_RATIO:.2f}   "
        f"{mark(ratio >= TARGET_RATIO)}   (per round: {per_round})"
        if ratio is not None
        else "  hub / bare,     1 event/request            -",
        f"    the same per CPU-second of the server process: {summary['ratio_1_per_cpu_s']:.2f}"
        " (less sensitive to a busy machine)"
        if summary.get("ratio_1_per_cpu_s") is not None
        else "",
        f"  bare handler, 100 events/request  {rate('bare_100')}",
        f"  hub,          100 events/request  {rate('hub_100')}  target >= {TARGET_BATCH_RATE:,.0f}  "
        + (mark(hub100 >= TARGET_BATCH_RATE) if hub100 is not None else ""),
        f"  Segment /v1/batch, {SEGMENT_BATCH} events/call {rate(f'segment_{SEGMENT_BATCH}')}"
        if summary.get(f"segment_{SEGMENT_BATCH}") is not None
        else "",
        f"  Segment / hub, {SEGMENT_BATCH} events/request {seg_ratio:>10.2f}          target >= "
        f"{TARGET_SEGMENT_RATIO:.2f}   {mark(seg_ratio >= TARGET_SEGMENT_RATIO)}   (per round: {seg_per_round})"
        if seg_ratio is not None
        else "",
        f"    the same per CPU-second of the hub process: {summary['ratio_segment_per_cpu_s']:.2f}"
        if summary.get("ratio_segment_per_cpu_s") is not None
        else "",
        f"  hand-written FastAPI + SQLModel, 1 event/request   {rate('handwritten_1')}"
        if summary.get("handwritten_1") is not None
        else "",
        f"  hand-written FastAPI + SQLModel, 100 events/request {rate('handwritten_100')}"
        if summary.get("handwritten_100") is not None
        else "",
        f"  hub / hand-written, 100 events/request {summary['ratio_handwritten_100']:>5.2f}          target >= "
        f"{TARGET_HANDWRITTEN_RATIO:.1f}    {mark(summary['ratio_handwritten_100'] >= TARGET_HANDWRITTEN_RATIO)}"
        if summary.get("ratio_handwritten_100") is not None
        else "",
        f"  hub / hand-written,   1 event/request  {summary['ratio_handwritten_1']:>5.2f}"
        if summary.get("ratio_handwritten_1") is not None
        else "",
        f"  hub peak RSS (VmHWM)              {peak:>10.0f} MB        target <= {TARGET_RSS_MB:.0f} MB  "
        f"{mark(peak <= TARGET_RSS_MB)}   (after start {rss_idle_mb:.0f} MB, at end {rss_end_mb:.0f} MB)",
        *(
            f"  hub with the feed / without, {batch:>3} events/request {summary[f'ratio_feed_{batch}']:>5.2f}"
            f"   target >= 0.90  {mark(summary[f'ratio_feed_{batch}'] >= 0.9)}"
            for batch in BATCH_SIZES
            if summary.get(f"ratio_feed_{batch}") is not None
        ),
        *(
            f"  journal, {batch:>3} ev/request: accepted / bare {summary[f'ratio_accepted_{batch}']:.2f},"
            f" processed / bare {summary[f'ratio_processed_{batch}']:.2f}"
            f" ({summary[f'processed_{batch}']:,.0f} events/s processed); lag max {summary[f'lag_max_{batch}']:.2f} s;"
            f" backlog drained in at most "
            + (f"{summary[f'drain_{batch}']:.1f} s" if summary.get(f"drain_{batch}") is not None else "-")
            for batch in BATCH_SIZES
            if summary.get(f"ratio_accepted_{batch}") is not None
        ),
        f"  errors                            {summary['errors']:>10,}",
    ]
    return "\n".join(line for line in lines if line)


def driver(args: argparse.Namespace) -> None:
    """Start both servers, drive them round by round, print the figures and the targets."""
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and not shutil.which("wrk"):
        sys.exit("--client wrk: wrk is not on PATH (apt-get install wrk), or use --client python")
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-ingest-"))
    with databases(args, workdir) as (database_url, handwritten_url):
        _drive(args, client, workdir, database_url, handwritten_url)


@contextmanager
def databases(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[str, str]]:
    """Fresh databases for the hub and the hand-written endpoint; PostgreSQL ones are dropped after.
    (The ``hub-nofeed`` server's is made from the hub's by :func:`copy_database`.)"""
    if args.database == "sqlite":
        yield f"sqlite:///{workdir}/prm.db", f"sqlite:///{workdir}/handwritten.db"
        return
    import sqlalchemy as sa

    base = sa.make_url(args.postgres_url)
    names = [f"prm_bench_{os.getpid()}_{which}" for which in ("hub", "hw", "nofeed")]
    admin = sa.create_engine(base.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in names[:2]:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        urls = [base.set(database=n, drivername="postgresql").render_as_string(hide_password=False) for n in names]
        yield urls[0], urls[1]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def copy_database(args: argparse.Namespace, database_url: str) -> str:
    """A copy of the hub's migrated database, key included, for the ``hub-nofeed`` server."""
    import sqlalchemy as sa

    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        copy = Path(url.database or "").with_name("nofeed.db")
        shutil.copyfile(url.database or "", copy)
        return f"sqlite:///{copy}"
    name = f"prm_bench_{os.getpid()}_nofeed"
    admin = sa.create_engine(sa.make_url(args.postgres_url).set(drivername="postgresql+psycopg"))
    try:
        with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{url.database}"')
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def _drive(args: argparse.Namespace, client: str, workdir: Path, database_url: str, handwritten_url: str) -> None:
    print(
        f"prm ingest benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cpus {os.cpu_count()}"
        f"  load avg {os.getloadavg()[0]:.2f}\n"
        f"database {args.database}  client {client} ({args.concurrency} in flight)"
        f"  rounds {args.rounds} x {args.duration:g} s"
        f" (+{args.warmup:g} s warm-up)  customers {args.customers:,}  mix {args.mix}"
        f"  segment {'on' if args.segment else 'off'}"
        f"  journal {f'on, processors {args.journal_processors}' if args.journal else 'off'}"
        f"  hub log level {args.hub_log_level}\n"
        f"work dir {workdir}",
        flush=True,
    )
    if client == "python":
        print(
            "note: the Python client needs about as much CPU per request as the bare handler, so on a small"
            " machine the bare rate (and so the ratio) is client-bound; install wrk for a fair floor",
            flush=True,
        )
    key = asyncio.run(create_web_key(database_url))
    settings = LoadSettings(client, args.concurrency, args.customers, key, workdir, args.wrk_threads, args.mix)
    phases: list[Phase] = []
    hub_argv = ["--role", "hub", "--database-url", database_url, "--hub-log-level", args.hub_log_level]
    if args.identity_rules == "both":
        hub_argv += ["--hub-identity-rules", "limited"]
    if args.hub_profile:
        hub_argv += ["--hub-profile", str(Path(args.hub_profile).resolve())]
    if args.hub_diagnostics:
        hub_argv.append("--hub-diagnostics")
    if args.journal:
        hub_argv += ["--journal", "--journal-processors", str(args.journal_processors)]
    nofeed_argv: list[str] = []
    if "hub-nofeed" in args.servers:  # copied before any hub opens the database
        nofeed_argv = [*hub_argv, "--no-feed"]
        nofeed_argv[nofeed_argv.index("--database-url") + 1] = copy_database(args, database_url)
    try:
        with ExitStack() as stack:
            bare = stack.enter_context(start_server("bare", ["--role", "bare"], free_port(), workdir))
            hub = stack.enter_context(
                start_server("hub", hub_argv, free_port(), workdir, diagnostics=args.hub_diagnostics)
            )
            servers = [bare, hub]
            if args.identity_rules == "both":
                # the same database, loaded in turn: the hub with rules (a limit the mix reaches) and without
                argv = ["--role", "hub", "--database-url", database_url, "--hub-log-level", args.hub_log_level]
                argv += ["--hub-identity-rules", "off", *(["--hub-diagnostics"] if args.hub_diagnostics else [])]
                servers.append(
                    stack.enter_context(
                        start_server("hub-norules", argv, free_port(), workdir, diagnostics=args.hub_diagnostics)
                    )
                )
            if nofeed_argv:
                servers.append(
                    stack.enter_context(
                        start_server("hub-nofeed", nofeed_argv, free_port(), workdir, diagnostics=args.hub_diagnostics)
                    )
                )
            if "handwritten" in args.servers:
                hw_argv = ["--role", "handwritten", "--database-url", handwritten_url, "--key", key]
                servers.append(stack.enter_context(start_server("handwritten", hw_argv, free_port(), workdir)))
            for server in servers:
                server.wait_ready()
            rss_idle_mb = proc_status_kb(hub.proc.pid, "VmRSS") / 1024
            print(f"hub pid {hub.proc.pid}, RSS after start {rss_idle_mb:.0f} MB\n", flush=True)
            targets = [srv for srv in servers if srv.name in args.servers or srv.name == "hub-norules"]
            for rnd in range(1, args.rounds + 1):
                for batch in args.batches:
                    for server in targets:
                        phase = measure(settings, server, batch, args.duration, args.warmup, rnd)
                        phases.append(phase)
                        print_row(phase)
                    # Segment right after the hub's own phase at the same batch size (same noise)
                    if args.segment and batch == SEGMENT_BATCH:
                        phase = measure(settings, hub, batch, args.duration, args.warmup, rnd, api="segment")
                        phases.append(phase)
                        print_row(phase)
                if args.segment and SEGMENT_BATCH not in args.batches:
                    phase = measure(settings, hub, SEGMENT_BATCH, args.duration, args.warmup, rnd, api="segment")
                    phases.append(phase)
                    print_row(phase)
            peak_mb = proc_status_kb(hub.proc.pid, "VmHWM") / 1024
            rss_end_mb = proc_status_kb(hub.proc.pid, "VmRSS") / 1024
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(phases)
    summary["hub_peak_rss_mb"] = peak_mb
    print(render_summary(summary, args.rounds, rss_idle_mb, rss_end_mb), flush=True)
    if args.identity_rules == "both":
        print(render_identity_rules(phases), flush=True)
    if args.json:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "database": args.database,
            "client": client,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "customers": args.customers,
            "phases": [
                {**asdict(p), "events_per_s": p.events_per_s, "events_per_cpu_s": p.events_per_cpu_s} for p in phases
            ],
            "summary": summary,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.keep:
        print(f"kept {workdir} (hub.log, bare.log, prm.db)")


def render_identity_rules(phases: list[Phase]) -> str:
    """The hub with identity rules next to the hub without, per batch size (medians over rounds)."""
    lines = ["identity rules (the same database; with: defaults and an email limit the logins reach)"]
    for batch in sorted({p.batch for p in phases if p.server == "hub-norules"}):
        on = statistics.median(p.events_per_s for p in phases if p.server == "hub" and p.batch == batch)
        off = statistics.median(p.events_per_s for p in phases if p.server == "hub-norules" and p.batch == batch)
        overhead = (off - on) / off * 100 if off else 0.0
        lines.append(
            f"  {batch:>3} ev/req  with {on:>10,.0f} events/s   without {off:>10,.0f} events/s"
            f"   overhead {overhead:>5.1f} %   target <= 5 %  {mark(overhead <= 5)}"
        )
    return "\n".join(lines)


def _csv(kind: type) -> Any:
    """An argparse type: a comma-separated list of ``kind``."""

    def parse(raw: str) -> list[Any]:
        return [kind(x.strip()) for x in raw.split(",") if x.strip()]

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest throughput of the PRM hub next to a bare aiohttp JSON handler (prints, never asserts).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run: 1 round, 3 s windows, 1.5 s warm-ups")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the phases; the summary takes medians")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds measured per phase")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of unmeasured load before each phase's window"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--customers", type=int, default=10_000, help="size of the customer (email) pool")
    parser.add_argument(
        "--mix",
        choices=sorted(MIXES),
        default="web",
        help="event mix: web (with anonymous visits and logins, so some merges) or known (identified customers only)",
    )
    parser.add_argument(
        "--client", choices=["auto", "wrk", "python"], default="auto", help="load generator (auto: wrk if installed)"
    )
    parser.add_argument(
        "--servers",
        type=_csv(str),
        default="bare,hub",
        help="which servers to load, comma-separated: bare, hub, handwritten (bench/handwritten.py), hub-nofeed"
        " (a second hub, on a copy of the hub's database, with [feed] enabled = false: the change feed's cost)",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="the hub's (and the hand-written endpoint's) database: a fresh SQLite file, or a fresh database on"
        " --postgres-url",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("PRM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL server where the benchmark may create and drop databases",
    )
    parser.add_argument("--batches", type=_csv(int), default="1,100", help="events per request, comma-separated")
    parser.add_argument(
        "--segment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"each round, also load the hub through the Segment-compatible POST {SEGMENT_PATH} (contrib/prm_segment)"
        f" at {SEGMENT_BATCH} messages per call, right after the hub phase at {SEGMENT_BATCH} events per request",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--hub-log-level", choices=["debug", "info", "warning"], default="info", help="as prm serve --log-level"
    )
    parser.add_argument("--hub-profile", metavar="PATH", help="run the hub under cProfile and dump the stats here")
    parser.add_argument(
        "--hub-diagnostics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count the hub writer's commits and statements and probe its event-loop lag (SQLAlchemy engine "
        "events and a 10 ms timer inside the hub; adds a 'writer:' line under each hub phase)",
    )
    parser.add_argument(
        "--identity-rules",
        choices=["on", "both"],
        default="on",
        help="both: also load a second hub process on the same database without identity rules, right after the"
        " hub at each batch size, and print the two side by side (the first with an email limit the logins reach)",
    )
    parser.add_argument("--hub-identity-rules", choices=["on", "limited", "off"], default="on", help=argparse.SUPPRESS)
    parser.add_argument(
        "--journal",
        action="store_true",
        help="run the hub with [ingest] journal = true: report acceptance and processing separately, with lag",
    )
    parser.add_argument(
        "--journal-processors",
        type=int,
        default=0,
        help="with --journal: processors in processes of their own, as prm serve --processors (0: in the hub)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (database and logs)")
    # internal: the roles of the processes the driver starts
    parser.add_argument(
        "--role", choices=["driver", "hub", "bare", "handwritten", "load"], default="driver", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--no-feed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--window", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="load", help=argparse.SUPPRESS)
    parser.add_argument("--api", choices=APIS, default="hub", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1.5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role == "hub":
        serve_hub(
            args.database_url,
            args.port,
            args.hub_log_level,
            args.hub_profile,
            args.hub_diagnostics,
            args.hub_identity_rules,
            not args.no_feed,
            args.journal,
            args.journal_processors,
        )
    elif args.role == "bare":
        serve_bare(args.port)
    elif args.role == "handwritten":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from handwritten import serve as serve_handwritten

        serve_handwritten(args.database_url, args.port, args.key)
    elif args.role == "load":
        window_from, window_to = (float(x) for x in args.window.split(","))
        figures = asyncio.run(
            python_load(
                args.url,
                args.key,
                args.batch,
                args.concurrency,
                (window_from, window_to),
                args.tag,
                args.customers,
                seed=zlib.crc32(args.tag.encode()),
                mix=args.mix,
                api=args.api,
            )
        )
        print("LOADJSON " + json.dumps(figures), flush=True)
    else:
        driver(args)


if __name__ == "__main__":
    main()
