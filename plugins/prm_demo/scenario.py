"""The demo's hub, partners, flagship scenario and day of traffic (see :mod:`prm_demo`)."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import shutil
import socket
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as email_policy
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from attrs import define, field
from prm_tmf.simulators import AppointmentSimulator, StockSimulator
from twilio.request_validator import RequestValidator

from prm_core.plugin import HUB, Config, builtin_plugins, create_app, create_key, hookimpl

__all__ = ["Demo", "Step", "run_demo"]

T = TypeVar("T")

BUDGETS = {"web": 250, "ivr": 1500, "callcenter": 1000, "pos": 300}
FIELD_SERVICE_MS = 120  # a field-service firm's booking API: slower than a stock lookup
SUPPLIER_MS = 60
ANN = {"email": "ann.lee@example.com", "phone": "+14155550123", "loyalty_card": "LC-1001"}
WAIT_S = 15  # how long a step waits for what the hub does in the background (triggers, the survey reader)
WELCOME_SUBJECT = "Welcome to platinum"
SURVEY_SUBJECT = "How was your technician's visit?"


@define
class Step:
    """One narrated step: what happened, at which touch point, how long it took against its budget."""

    title: str
    touchpoint: str
    elapsed_ms: float
    budget_ms: int | None
    ok: bool
    detail: str = ""

    @property
    def in_budget(self) -> bool:
        return self.budget_ms is None or self.elapsed_ms <= self.budget_ms


@define
class Tally:
    """A touch point's answers during the day of traffic."""

    budget_ms: int
    times: list[float] = field(factory=list)
    errors: int = 0

    @property
    def misses(self) -> int:
        return sum(1 for t in self.times if t > self.budget_ms)


class MergeCounter:
    """Counts the merges the hub makes (its ``prm_customers_merged`` hook)."""

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def prm_customers_merged(self, merge: Any) -> None:
        self.count += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Demo:
    """The in-process hub, its partner simulators, keys, and a client speaking the wire formats."""

    def __init__(self, workdir: Path, echo: Callable[[str], None]) -> None:
        self.merges = MergeCounter()
        self.workdir = workdir
        self.echo = echo
        self.twilio_token = secrets.token_hex(16)
        self.email_secret = secrets.token_urlsafe(32)
        self.maildir = workdir / "mail"
        self.partner_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.keys: dict[str, str] = {}
        self.position = 0  # the latest journal position an events answer gave: what caught_up() waits for
        self.steps: list[Step] = []
        self.field = AppointmentSimulator(self.partner_secret, latency_ms=FIELD_SERVICE_MS, technicians=50)
        self.supplier = StockSimulator(
            self.partner_secret, stock={"pump-7": 12, "belt-2": 40, "hose-1": 0}, latency_ms=SUPPLIER_MS
        )
        self._runners: list[web.AppRunner] = []
        self.session: aiohttp.ClientSession | None = None

    # ---- lifetime ---------------------------------------------------------------------------

    def config(self) -> Config:
        raw: dict[str, Any] = {
            "server": {"public_url": self.base},
            "touchpoints": {
                "ivr": {"twilio_auth_token": self.twilio_token},
                "callcenter": {"screenpop": {"bus": "local"}},
                # the email touch point writes each message into a maildir, where the demo reads it
                "email": {"transport": "maildir", "maildir": str(self.maildir), "from": "Shop <hello@shop.example>",
                          "reply_to": "replies@shop.example", "secret": self.email_secret},
            },
            "partners": {
                "fieldservice": {
                    "role": "field_service",
                    "protocol": "tmf646",
                    "url": self.field.url,
                    "secret": self.partner_secret,
                    "timeout_ms": 800,
                },
                "supplier": {
                    "role": "inventory",
                    "protocol": "tmf687",
                    "url": self.supplier.url,
                    "secret": self.partner_secret,
                    "timeout_ms": 600,
                },
            },
            "tiers": {"rules": {"platinum": "lifetime_revenue >= 5000", "gold": "lifetime_revenue >= 1000"}},
            # what the business knows: accessories and warranty levels for receipt and web offers
            "catalog": {
                "premium_price": 1000,
                "items": {
                    "wm-300": {"title": "WM-300 washer", "category": "washers", "price": "1899.00",
                               "accessories": ["hose-kit", "pedestal"],
                               "warranty_levels": ["basic", "extended", "premium"]},
                    "dr-200": {"title": "DR-200 dryer", "category": "dryers", "price": "1499.00",
                               "accessories": ["vent-kit"], "warranty_levels": ["basic", "extended"]},
                    "fr-900": {"title": "FR-900 fridge", "category": "fridges", "price": "2399.00",
                               "accessories": ["water-filter"], "warranty_levels": ["basic", "extended", "premium"]},
                    "hose-kit": {"title": "Hose kit", "category": "accessories", "price": "29.00"},
                    "pedestal": {"title": "Pedestal", "category": "accessories", "price": "199.00"},
                    "vent-kit": {"title": "Vent kit", "category": "accessories", "price": "39.00"},
                    "water-filter": {"title": "Water filter", "category": "accessories", "price": "49.00"},
                },
            },
            "offers": {"caps": {"ivr": 1, "pos": 3}},
            "triggers": {
                "quiet_hours": "none",  # the demo runs at any hour
                "poll_s": 0.2,
                # a few seconds after she becomes platinum: her name, from the CRM, is in by then
                "platinum_welcome": {
                    "on": "customer.updated", "when": "change['tier'] == 'platinum'", "delay": "3s",
                    "purpose": "transactional",
                    "action": {"kind": "message", "channel": "email", "subject": WELCOME_SUBJECT,
                               "template": "Dear $first_name, welcome to our platinum tier: a technician within"
                                           " one business day, and the priority line when you call."},
                },
                "visit_survey": {
                    "on": "fulfillment.updated",
                    "when": "change['role'] == 'field_service' and change['status'] == 'completed'",
                    "purpose": "transactional",
                    "action": {"kind": "message", "channel": "email", "survey": "csat", "subject": SURVEY_SUBJECT,
                               "template": "How was your technician's visit, $first_name? Reply with a score"
                                           " from 1 to 5.\nOr answer with one click: $survey_url"},
                },
            },
            "surveys": {"poll_s": 0.2},
        }  # fmt: skip
        return Config(database_url=f"sqlite:///{self.workdir}/prm.db", public_url=self.base, raw=raw)

    def app(self) -> web.Application:
        """The demo's hub: the built-in plugins only, whatever else is installed, so the
        scenario and its scorecard are the same on every machine."""
        return create_app(self.config(), plugins=[*builtin_plugins(), self.merges], autoload=False)

    async def start(self) -> None:
        for sim in (self.field, self.supplier):
            self._runners.append(await sim.serve())
        app = self.app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runners.append(runner)
        store = app[HUB].store
        for scope in ("touchpoint:web", "touchpoint:pos", "touchpoint:callcenter", "touchpoint:email", "read", "admin"):
            self.keys[scope], _ = await create_key(store, scope, name="demo")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        for runner in reversed(self._runners):
            await runner.cleanup()

    # ---- the wire formats -------------------------------------------------------------------

    def _auth(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    async def post(self, path: str, body: Any, scope: str) -> tuple[int, Any, float]:
        assert self.session is not None
        started = time.perf_counter()
        async with self.session.post(self.base + path, json=body, headers=self._auth(scope)) as resp:
            text = await resp.text()
            elapsed = (time.perf_counter() - started) * 1000
            answer = json.loads(text) if text and resp.content_type == "application/json" else text
            if isinstance(answer, dict) and str(answer.get("position", "")).isdigit():
                self.position = max(self.position, int(answer["position"]))
            return resp.status, answer, elapsed

    async def caught_up(self) -> None:
        """Wait until the events the demo sent are recorded (a read after the latest events
        answer's position): what reads everything, the scorecard and the conflicts, sees them."""
        assert self.session is not None
        url = f"{self.base}/v1/customers/email:{ANN['email']}?after={self.position}"
        for _ in range(int(WAIT_S)):  # a 503 names a position not processed yet: ask again
            async with self.session.get(url, headers=self._auth("read")) as resp:
                if resp.status != 503:
                    return

    async def view(self, ref: str) -> dict[str, Any]:
        assert self.session is not None
        async with self.session.get(f"{self.base}/v1/customers/{ref}", headers=self._auth("read")) as resp:
            resp.raise_for_status()
            return dict(await resp.json())

    async def scorecard(self) -> dict[str, Any] | None:
        assert self.session is not None
        async with self.session.get(f"{self.base}/v1/scorecard", headers=self._auth("read")) as resp:
            return dict(await resp.json()) if resp.status == 200 else None

    def mail(self, subject: str) -> EmailMessage | None:
        """The email with this subject in the maildir's ``new/``, if it is there."""
        for path in sorted((self.maildir / "new").glob("*.eml")):
            email = BytesParser(policy=email_policy).parsebytes(path.read_bytes())
            if str(email["Subject"]) == subject and isinstance(email, EmailMessage):
                return email
        return None

    async def twilio(self, path: str, params: Mapping[str, str]) -> tuple[int, str, float]:
        """POST a Twilio webhook signed exactly as Twilio signs it."""
        assert self.session is not None
        url = path if path.startswith("http") else self.base + path
        signature = RequestValidator(self.twilio_token).compute_signature(url, dict(params))
        headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
        started = time.perf_counter()
        async with self.session.post(url, data=urlencode(params), headers=headers) as resp:
            text = await resp.text()
            return resp.status, text, (time.perf_counter() - started) * 1000

    # ---- narration --------------------------------------------------------------------------

    def step(self, step: Step) -> Step:
        self.steps.append(step)
        budget = f"/ {step.budget_ms:>4} ms" if step.budget_ms is not None else "         "
        verdict = "ok" if step.ok and step.in_budget else ("LATE" if step.ok else "FAILED")
        self.echo(f"  [{step.touchpoint:<10}] {step.elapsed_ms:7.1f} ms {budget}  {verdict:<6} {step.title}")
        if step.detail:
            for line in step.detail.splitlines():
                self.echo(f"  {'':<12}{'':>26}  {line}")
        return step


def _pos_sale(seq: int, ref: Mapping[str, str], items: list[tuple[str, str, str, str]], day: str) -> dict[str, Any]:
    """A canonical POS sale of ``items`` (item id, description, category, unit price), paid by card."""
    lines = [
        {"item_id": i, "description": d, "category": c, "quantity": 1, "unit_price": p, "extended_amount": p}
        for i, d, c, p in items
    ]
    total = f"{sum(float(p) for *_, p in items):.2f}"
    return {
        "transaction_type": "sale",
        "store_id": "S042",
        "workstation_id": "POS3",
        "sequence_number": seq,
        "business_day": day,
        "occurred_at": _now(),
        "currency": "USD",
        "line_items": lines,
        "tax": "0.00",
        "total": total,
        "tenders": [{"type": "card", "amount": total}],
        "customer_ref": dict(ref),
    }


def _says(twiml: str) -> list[str]:
    root = ET.fromstring(twiml)
    return [el.text or "" for el in root.iter("Say")]


def _gather_action(twiml: str) -> str | None:
    gather = next(ET.fromstring(twiml).iter("Gather"), None)
    return gather.get("action") if gather is not None else None


async def _until(probe: Callable[[], Awaitable[T | None]], timeout_s: float = WAIT_S) -> T | None:
    """What ``probe`` finds, asked every 100 ms, or ``None`` after ``timeout_s``: what the hub
    does in the background (a trigger's message, a survey's answer) comes a moment later."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.1)


def _first_line(email: EmailMessage) -> str:
    body = email.get_body(preferencelist=("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    return next((line for line in text.splitlines() if line.strip()), "")


def _reply(to: EmailMessage, text: str) -> bytes:
    """Ann's answer to ``to``, as her mail client sends it: quoting it, naming it in In-Reply-To."""
    reply = EmailMessage()
    reply["From"] = f"Ann Lee <{ANN['email']}>"
    reply["To"] = str(to["Reply-To"] or to["From"])
    reply["Subject"] = f"Re: {to['Subject']}"
    reply["Date"] = format_datetime(datetime.now(UTC))
    reply["Message-ID"] = f"<{secrets.token_hex(8)}@mail.example.com>"
    reply["In-Reply-To"] = str(to["Message-ID"])
    reply["References"] = str(to["Message-ID"])
    quoted = "\n".join(f"> {line}" for line in _first_line(to).splitlines())
    reply.set_content(f"{text}\n\nOn {to['Date']}, {to['From']} wrote:\n{quoted}\n")
    return reply.as_bytes()


async def flagship(demo: Demo) -> None:
    """The flagship scenario: a platinum service request at the portal, then the same customer calls."""
    day = datetime.now(UTC).date().isoformat()
    demo.echo("\nThe flagship scenario: a platinum customer's service request, then her call")

    # 1. Ann's purchases at the store make her platinum (tier rules from the config)
    status, answer, ms = await demo.post(
        "/v1/touchpoints/pos/transactions",
        _pos_sale(
            1,
            ANN,
            [
                ("wm-300", "Washer WM-300", "washers", "1899.00"),
                ("dr-200", "Dryer DR-200", "dryers", "1499.00"),
                ("fr-900", "Fridge FR-900", "fridges", "2399.00"),
            ],
            day,
        ),
        "touchpoint:pos",
    )
    view = await demo.view(f"email:{ANN['email']}") if status == 200 else {}
    receipt = (answer.get("delivery") or {}).get("receipt_lines", []) if isinstance(answer, dict) else []
    demo.step(
        Step(
            "Ann buys a washer, a dryer and a fridge at store S042 (5,797 USD)",
            "pos",
            ms,
            BUDGETS["pos"],
            status == 200 and view.get("tier") == "platinum" and bool(receipt),
            f"tier now {view.get('tier')!r} ({view.get('tier_source')}); the receipt prints:\n"
            + "\n".join(f"| {line}" for line in receipt),
        )
    )

    # her profile from the company's CRM: a name to greet her by, an address for the technician
    assert demo.session is not None
    started = time.perf_counter()
    async with demo.session.patch(
        f"{demo.base}/v1/customers/email:{ANN['email']}",
        json={"traits": {"first_name": "Ann", "last_name": "Lee", "address": "12 Elm Street, Springfield"}},
        headers=demo._auth("admin"),
    ) as resp:
        patched = resp.status
    demo.step(
        Step("Her profile from the CRM: name and address", "admin", (time.perf_counter() - started) * 1000,
             None, patched == 200)
    )  # fmt: skip

    # 2. She signs in at the web portal: the anonymous visit joins her profile
    visit = {
        "events": [
            {"id": "ann-web-1", "type": "page", "occurred_at": _now(), "identities": {"anonymous_id": "browser-ann"}},
            {
                "id": "ann-web-2",
                "type": "identify",
                "occurred_at": _now(),
                "identities": {"anonymous_id": "browser-ann", "email": ANN["email"]},
            },
        ]
    }
    status, answer, ms = await demo.post("/v1/touchpoints/web/events", visit, "touchpoint:web")
    demo.step(Step("Ann signs in at the web portal", "web", ms, None, status == 200, f"answer {answer}"))

    # 3. The service request: stock of the parts and a technician within her entitlement, in one answer
    request = {
        "id": "ann-sr-1",
        "type": "service.request",
        "occurred_at": _now(),
        "identities": {"email": ANN["email"], "anonymous_id": "browser-ann"},
        "data": {"product_id": "wm-300", "issue": "the washer leaks", "parts": ["pump-7", "belt-2"]},
    }
    status, answer, ms = await demo.post("/v1/touchpoints/web/requests", request, "touchpoint:web")
    fulfillments = (answer.get("delivery") or {}).get("fulfillments", []) if isinstance(answer, dict) else []
    visit_window: Mapping[str, Any] = next((f["data"] for f in fulfillments if f.get("partner") == "fieldservice"), {})
    parts: list[Any] = next((f["data"].get("parts", []) for f in fulfillments if f.get("partner") == "supplier"), [])
    window_ok = bool(visit_window.get("window_start")) and datetime.fromisoformat(
        str(visit_window.get("window_start", "1970-01-01T00:00:00+00:00")).replace("Z", "+00:00")
    ) <= datetime.now(UTC) + timedelta(days=4)
    demo.step(
        Step(
            "Ann reports a leaking washer at the portal: technician booked and parts checked, concurrently",
            "web",
            ms,
            BUDGETS["web"],
            status == 200 and window_ok and bool(parts) and not answer.get("degraded"),
            f"technician {visit_window.get('window_start')} to {visit_window.get('window_end')}"
            f" (platinum: within 1 business day)\n"
            + "parts: "
            + ", ".join(f"{p.get('id')} {p.get('availability')}" for p in parts)
            + f"\ndegraded: {answer.get('degraded') if isinstance(answer, dict) else answer}",
        )
    )

    # 4. Agent a-7 is at the desk, the screen-pop socket open
    ws = await demo.session.ws_connect(
        demo.base.replace("http", "ws") + "/v1/agents/a-7/screenpop", headers=demo._auth("touchpoint:callcenter")
    )
    await ws.receive_json(timeout=10)  # hello

    # 5. Ann calls: the IVR greets her by name and offers the priority line first
    call = {"CallSid": "CA" + secrets.token_hex(16), "From": ANN["phone"], "To": "+18005550199", "Direction": "inbound"}
    status, twiml, ms = await demo.twilio("/v1/touchpoints/ivr/twilio/voice", {**call, "CallStatus": "ringing"})
    said = _says(twiml) if status == 200 else []
    joined = " ".join(said)
    demo.step(
        Step(
            "Ann calls; the IVR greets her by name, offers the priority line first, tells the visit",
            "ivr",
            ms,
            BUDGETS["ivr"],
            status == 200 and "Ann" in joined and "priority" in joined.lower(),
            "\n".join(f'says: "{s}"' for s in said[:4]),
        )
    )
    action = _gather_action(twiml) if status == 200 else None
    if action:
        status, twiml, ms = await demo.twilio(action, {**call, "Digits": "0", "CallStatus": "in-progress"})
        enqueued = [el.text for el in ET.fromstring(twiml).iter("Enqueue")] if status == 200 else []
        demo.step(
            Step(
                "She presses 0: transferred to the priority queue",
                "ivr",
                ms,
                BUDGETS["ivr"],
                status == 200 and enqueued == ["priority"],
                f"enqueue {enqueued}",
            )
        )

    # 6. The call is offered to agent a-7: the screen pop shows the request and the IVR path
    offered = {
        "id": f"{call['CallSid']}-offered",
        "type": "call.offered",
        "occurred_at": _now(),
        "data": {"call_id": call["CallSid"], "ani": ANN["phone"], "queue": "priority", "agent_id": "a-7"},
    }
    started = time.perf_counter()
    status, _, _ = await demo.post("/v1/touchpoints/callcenter/events", offered, "touchpoint:callcenter")
    pop: dict[str, Any] = {}
    while status == 200:
        msg = await ws.receive_json(timeout=10)
        if msg.get("type") == "screen_pop":
            pop = msg
            break
    ms = (time.perf_counter() - started) * 1000
    text = json.dumps(pop)
    demo.step(
        Step(
            "The call rings agent a-7: the screen pop shows the service request and the IVR path",
            "callcenter",
            ms,
            BUDGETS["callcenter"],
            bool(pop) and "service.request" in text and "ivr." in text and '"platinum"' in text,
            f"pop for {pop.get('customer', {}).get('tier')} customer; recent contacts at"
            f" {sorted({c.get('touchpoint') for c in pop.get('customer', {}).get('recent_contacts', [])})}",
        )
    )
    await ws.close()

    # 7. The agent writes a note and sets the outcome; both are dialogue events
    notes = {
        "events": [
            {"id": f"{call['CallSid']}-answered", "type": "call.answered", "occurred_at": _now(),
             "data": {"call_id": call["CallSid"], "agent_id": "a-7"}},
            {"id": f"{call['CallSid']}-note", "type": "agent.note", "occurred_at": _now(),
             "data": {"call_id": call["CallSid"], "text": "Confirmed tomorrow's visit; pump in stock."}},
            {"id": f"{call['CallSid']}-outcome", "type": "call.outcome", "occurred_at": _now(),
             "data": {"call_id": call["CallSid"], "outcome": "resolved"}},
            {"id": f"{call['CallSid']}-ended", "type": "call.ended", "occurred_at": _now(),
             "data": {"call_id": call["CallSid"]}},
        ]
    }  # fmt: skip
    status, answer, ms = await demo.post("/v1/touchpoints/callcenter/events", notes, "touchpoint:callcenter")
    demo.step(Step("The agent notes the call and sets the outcome", "callcenter", ms, None, status == 200))

    await after_the_visit(demo, str(visit_window.get("appointment_id") or ""))


async def after_the_visit(demo: Demo, appointment_id: str) -> None:
    """The triggers at work: the platinum welcome by email, then the technician's visit, its
    survey by email, Ann's answer by reply, in her 360 view and the scorecard."""
    assert demo.session is not None

    # 8. The platinum welcome (trigger platinum_welcome, a few seconds after the purchase) is in her mailbox
    started = time.perf_counter()

    async def welcome_mail() -> EmailMessage | None:
        return demo.mail(WELCOME_SUBJECT)

    welcome = await _until(welcome_mail)
    demo.step(
        Step(
            "The platinum welcome arrives by email (trigger platinum_welcome)",
            "email",
            (time.perf_counter() - started) * 1000,
            None,
            welcome is not None and str(welcome["To"]) == ANN["email"] and "Ann" in _first_line(welcome),
            f"Subject: {welcome['Subject']}\n| {_first_line(welcome)}" if welcome is not None
            else f"no email with subject {WELCOME_SUBJECT!r} in {demo.maildir / 'new'} after {WAIT_S} s",
        )
    )  # fmt: skip

    # 9. The technician has been: the field-service firm tells the hub (a signed TMF646 notification)
    started = time.perf_counter()
    demo.field.callback_url = f"{demo.base}/v1/partners/fieldservice/callbacks"
    if appointment_id in demo.field.appointments:
        demo.field.set_status(appointment_id, "completed")

    async def completed() -> dict[str, Any] | None:
        view = await demo.view(f"email:{ANN['email']}")
        visits = [f for f in view.get("fulfillments", []) if f.get("role") == "field_service"]
        done = [f for f in visits if f.get("status") == "completed"]
        return done[0] if done else None

    visit = await _until(completed) if appointment_id in demo.field.appointments else None
    demo.field.callback_url = None  # its bookings answer at once again, as before (notifications already went)
    demo.step(
        Step(
            "The technician fixes the washer: the firm's AppointmentStateChangeEvent completes the visit",
            "partner",
            (time.perf_counter() - started) * 1000,
            None,
            visit is not None,
            f"fulfillment {visit['id']} of {visit['partner']}: {visit['status']}" if visit is not None
            else f"appointment {appointment_id or '(none booked)'} not completed in the view after {WAIT_S} s",
        )
    )  # fmt: skip

    # 10. Its survey (trigger visit_survey, on the completed visit) is in her mailbox
    started = time.perf_counter()

    async def survey_mail() -> EmailMessage | None:
        return demo.mail(SURVEY_SUBJECT)

    survey = await _until(survey_mail) if visit is not None else None
    demo.step(
        Step(
            "The visit's survey arrives by email (trigger visit_survey, CSAT)",
            "email",
            (time.perf_counter() - started) * 1000,
            None,
            survey is not None and "1 to 5" in _first_line(survey),
            f"Subject: {survey['Subject']}\n| {_first_line(survey)}" if survey is not None
            else f"no email with subject {SURVEY_SUBJECT!r} in {demo.maildir / 'new'}",
        )
    )  # fmt: skip

    # 11. Ann answers by replying; her mail reaches the hub as raw RFC 822
    answered: dict[str, Any] = {}
    if survey is not None:
        started = time.perf_counter()
        async with demo.session.post(
            f"{demo.base}/v1/touchpoints/email/inbound",
            data=_reply(survey, "5 - great technician"),
            headers={**demo._auth("touchpoint:email"), "Content-Type": "message/rfc822"},
        ) as resp:
            status = resp.status
            answered = await resp.json() if resp.content_type == "application/json" else {}
        ms = (time.perf_counter() - started) * 1000
        first = (answered.get("recorded") or [{}])[0]
        demo.step(
            Step(
                'Ann replies "5 - great technician" (POST /v1/touchpoints/email/inbound)',
                "email",
                ms,
                None,
                status == 200 and first.get("type") == "message.received" and bool(first.get("in_reply_to")),
                f"recorded {first.get('type')} in reply to {first.get('in_reply_to')}",
            )
        )  # fmt: skip

    # 12. The survey reader makes the reply her answer: in her 360 view and in the scorecard
    started = time.perf_counter()

    async def answer_in_view() -> dict[str, Any] | None:
        view = await demo.view(f"email:{ANN['email']}")
        return next((a for a in view.get("surveys", []) if a.get("about") == "field_service"), None)

    answer = await _until(answer_in_view) if answered else None
    card = await demo.scorecard() if answer is not None else None
    rows: list[dict[str, Any]] = (card or {}).get("touchpoints", [])
    row = next((t for t in rows if t.get("touchpoint") == "field_service"), {})
    figures = row.get("surveys") or {}
    csat = figures.get("csat") or {}
    demo.step(
        Step(
            "Her answer is in the 360 view and the scorecard counts it for field_service",
            "survey",
            (time.perf_counter() - started) * 1000,
            None,
            answer is not None and answer.get("score") == 5 and figures.get("answers", 0) >= 1,
            (f"360 view: {answer['kind'].upper()} {answer['score']}/{answer['scale'][1]} about {answer['about']}"
             f" (via {answer['via']}, trigger {answer['trigger']})\n"
             f"scorecard: field_service {figures.get('answers', 0)} answer(s), CSAT average {csat.get('average')},"
             f" satisfied {csat.get('satisfied_rate')}")
            if answer is not None else f"no survey answer in her 360 view after {WAIT_S} s",
        )
    )  # fmt: skip


async def day_of_traffic(demo: Demo, customers: int, seed: int) -> dict[str, Tally]:
    """A day of mixed traffic: each customer visits the web, calls, or buys, a few times."""
    rng = random.Random(seed)
    tallies = {tp: Tally(budget) for tp, budget in BUDGETS.items()}
    day = datetime.now(UTC).date().isoformat()
    catalog = [
        ("wm-300", "Washer WM-300", "washers", "1899.00"),
        ("hose-kit", "Hose kit", "accessories", "29.00"),
        ("water-filter", "Water filter", "accessories", "49.00"),
        ("dr-200", "Dryer DR-200", "dryers", "1499.00"),
    ]
    sequence = iter(range(1000, 10**9))
    assert demo.session is not None
    ws = await demo.session.ws_connect(
        demo.base.replace("http", "ws") + "/v1/agents/a-1/screenpop", headers=demo._auth("touchpoint:callcenter")
    )
    await ws.receive_json(timeout=10)
    pops: dict[str, asyncio.Future[float]] = {}

    async def read_pops() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                waiting = pops.get(str(data.get("call_id")))
                if data.get("type") == "screen_pop" and waiting is not None and not waiting.done():
                    waiting.set_result(time.perf_counter())

    reader = asyncio.create_task(read_pops())

    async def web_visit(n: int, who: dict[str, str], login: bool | None = None) -> None:
        # the browser's own id on every visit; logged in, the account's user id, email and, from
        # the profile, sometimes the phone; not logged in, the tracker's placeholder user id
        identities = {"anonymous_id": who["browser"]}
        if login if login is not None else rng.random() < 0.7:
            identities |= {"user_id": who["user_id"], "email": who["email"]}
            if rng.random() < 0.5:
                identities["phone"] = who["phone"]
        else:
            identities["user_id"] = "undefined"
        body = {
            "id": f"d-web-{n}",
            "type": "product.viewed",
            "occurred_at": _now(),
            "identities": identities,
            "data": {"product_id": rng.choice(catalog)[0]},
        }
        status, _, ms = await demo.post("/v1/touchpoints/web/requests", body, "touchpoint:web")
        _count(tallies["web"], status, ms)

    async def store_visit(n: int, who: dict[str, str]) -> None:
        items = rng.sample(catalog, rng.randint(1, 3))
        # half the buyers ask for the receipt by email: the card meets the web account
        ref = {"loyalty_card": who["card"]} | ({"email": who["email"]} if rng.random() < 0.5 else {})
        status, _, ms = await demo.post(
            "/v1/touchpoints/pos/transactions",
            _pos_sale(next(sequence), ref, items, day),
            "touchpoint:pos",
        )
        _count(tallies["pos"], status, ms)

    async def ivr_call(n: int, who: dict[str, str]) -> None:
        params = {"CallSid": f"CAday{n:08d}", "From": who["phone"], "To": "+18005550199", "CallStatus": "ringing"}
        status, twiml, ms = await demo.twilio("/v1/touchpoints/ivr/twilio/voice", params)
        _count(tallies["ivr"], status, ms)
        action = _gather_action(twiml) if status == 200 else None
        if action:
            status, _, ms = await demo.twilio(action, {**params, "Digits": "1", "CallStatus": "in-progress"})
            _count(tallies["ivr"], status, ms)

    async def agent_call(n: int, who: dict[str, str]) -> None:
        call_id = f"day-call-{n}"
        pops[call_id] = asyncio.get_running_loop().create_future()
        event = {
            "id": f"{call_id}-offered",
            "type": "call.offered",
            "occurred_at": _now(),
            "data": {"call_id": call_id, "ani": who["phone"], "queue": "support", "agent_id": "a-1"},
        }
        started = time.perf_counter()
        status, _, _ = await demo.post("/v1/touchpoints/callcenter/events", event, "touchpoint:callcenter")
        if status != 200:
            tallies["callcenter"].errors += 1
            return
        try:
            popped = await asyncio.wait_for(pops[call_id], timeout=5)
            tallies["callcenter"].times.append((popped - started) * 1000)
        except TimeoutError:
            tallies["callcenter"].errors += 1

    people = [
        {
            "email": f"customer{i}@example.com",
            "phone": f"+1212555{i:04d}",
            "card": f"LC-{20000 + i}",
            "user_id": f"U-{i}",
            "browser": f"browser-{i}",
        }
        for i in range(customers)
    ]
    # one in twenty shares the household's email with the person before: two accounts, one address
    households = [who for i, who in enumerate(people) if i % 20 == 1]
    for i, who in enumerate(people):
        if i % 20 == 1:
            who["email"] = people[i - 1]["email"]

    async def web_login(n: int, who: dict[str, str]) -> None:
        await web_visit(n, who, login=True)

    actions = [web_visit, web_visit, store_visit, ivr_call, agent_call]
    plan = [(rng.choice(actions), who) for who in people for _ in range(rng.randint(1, 3))]
    plan += [(web_login, who) for i, who in enumerate(people) if i % 20 == 0 and i + 1 < customers]
    plan += [(web_login, who) for who in households]
    rng.shuffle(plan)
    queue: asyncio.Queue[tuple[int, Any, dict[str, str]]] = asyncio.Queue()
    for n, (action, who) in enumerate(plan):
        queue.put_nowait((n, action, who))

    async def worker() -> None:
        while not queue.empty():
            n, action, who = queue.get_nowait()
            await action(n, who)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(8)))
    reader.cancel()
    await ws.close()
    demo.echo(f"  {len(plan):,} contacts by {customers:,} customers in {time.perf_counter() - started:.1f} s")
    await demo.caught_up()
    async with demo.session.get(f"{demo.base}/v1/identity/conflicts?limit=1000", headers=demo._auth("admin")) as resp:
        conflicts = len((await resp.json())["conflicts"]) if resp.status == 200 else None
    demo.echo(
        f"  identities: {demo.merges.count:,} merges (touch points sharing identifiers), "
        f"{conflicts if conflicts is not None else 'unknown'} conflicts kept for review "
        "(households sharing an email: GET /v1/identity/conflicts)"
    )
    return tallies


def _count(tally: Tally, status: int, ms: float) -> None:
    if status == 200:
        tally.times.append(ms)
    else:
        tally.errors += 1


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def _print_scorecard(card: Mapping[str, Any], echo: Callable[[str], None]) -> None:
    currency = card.get("currency", "")

    def revenue(figure: Mapping[str, Any]) -> str:
        # in the reporting currency, or per currency side by side when one has no rate
        if figure.get("revenue") is not None:
            return f"{figure['revenue']} {currency}"
        return " and ".join(f"{a} {c}" for c, a in figure.get("revenue_by_currency", {}).items()) or "-"

    echo(
        f"  {'touch point':<12} {'customers':>9} {'dialogues':>9} {'in budget':>9} {'offers':>7}"
        f" {'accepted':>8} {'revenue':>16}"
    )
    for tp in card.get("touchpoints", []):
        in_budget = tp.get("in_budget_rate")
        echo(
            f"  {tp.get('touchpoint', ''):<12} {tp.get('customers', 0):>9,} {tp.get('dialogues', 0):>9,}"
            f" {'-' if in_budget is None else f'{in_budget:.0%}':>9} {tp.get('offers_made', 0):>7,}"
            f" {tp.get('offers_accepted', 0):>8,} {revenue(tp):>16}"
        )
    balanced = card.get("balanced", {})

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    tiers = ", ".join(
        f"{t.get('tier') or 'no tier'} {t.get('customers')} ({share(t.get('revenue_share'))} of revenue)"
        for t in balanced.get("by_tier", [])
    )
    echo(f"  {balanced.get('customers', 0):,} customers by tier: {tiers}")
    rated = [
        f"{tp.get('touchpoint')} {tp['surveys']['answers']} (CSAT {tp['surveys']['csat']['average']})"
        if tp["surveys"].get("csat")
        else f"{tp.get('touchpoint')} {tp['surveys']['answers']}"
        for tp in card.get("touchpoints", [])
        if (tp.get("surveys") or {}).get("answers")
    ]
    if rated:
        echo(f"  survey answers: {', '.join(rated)}")


async def run_demo(*, customers: int, seed: int, keep: bool, echo: Callable[[str], None]) -> bool:
    """Run everything; True when every step met its budget and nothing failed."""
    workdir = Path(tempfile.mkdtemp(prefix="prm-demo-"))
    demo = Demo(workdir, echo)
    ok = False
    try:
        await demo.start()
        echo(
            f"PRM hub demo: an in-process hub on {demo.base} (SQLite in {workdir}), partners "
            f"{urlsplit(demo.field.url).netloc} (field service, TMF646, ~{FIELD_SERVICE_MS} ms) and "
            f"{urlsplit(demo.supplier.url).netloc} (supplier, TMF687, ~{SUPPLIER_MS} ms)"
        )
        await flagship(demo)
        echo(f"\nA day of mixed traffic: {customers:,} customers at every touch point")
        tallies = await day_of_traffic(demo, customers, seed)
        echo(f"  {'touch point':<12} {'answers':>8} {'p50':>8} {'p99':>8} {'budget':>8} {'misses':>7} {'errors':>7}")
        for tp, t in tallies.items():
            label = "screen pop" if tp == "callcenter" else tp
            echo(
                f"  {label:<12} {len(t.times):>8,} {_pct(t.times, 50):>6.1f}ms {_pct(t.times, 99):>6.1f}ms"
                f" {t.budget_ms:>6}ms {t.misses:>7} {t.errors:>7}"
            )
        await demo.caught_up()
        scorecard = await demo.scorecard()
        echo("\nThe scorecard (GET /v1/scorecard):")
        if scorecard is None:
            echo("  unavailable")
        else:
            _print_scorecard(scorecard, echo)
        failed = sum(1 for step in demo.steps if not step.ok)
        late = sum(1 for step in demo.steps if step.ok and not step.in_budget)
        misses = sum(t.misses for t in tallies.values())
        errors = sum(t.errors for t in tallies.values()) + (scorecard is None)
        ok = not (failed or late or misses or errors)
        if ok:
            echo(f"\nEvery step within its budget: {len(demo.steps)} scenario steps, "
                 f"{sum(len(t.times) for t in tallies.values()):,} answers during the day.")  # fmt: skip
        else:
            echo(f"\nMISSED: {failed} step(s) failed, {late} step(s) late; during the day {errors} answer(s)"
                 f" failed and {misses} late.")  # fmt: skip
    finally:
        await demo.stop()
        if keep:
            echo(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return ok
