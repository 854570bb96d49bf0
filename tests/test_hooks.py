"""Every hook, driven through the real hub.

Each class hands the hub plugins of its own through ``hub_plugins`` (registration hooks are
collected when the hub starts), drives the hub over HTTP or as a library, and asserts that
the core called the hook when it should, with the right values, and used what it returned.
Entry-point plugins are switched off, so only the plugins a test names are in play.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from positions import counts, recorded

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.errors import ConflictingRegistration, InvalidInput, PluginLoadError
from prm_core.hub import Hub, answer_id
from prm_core.model import (
    Customer,
    CustomerView,
    Delivery,
    Dialogue,
    Event,
    FulfillmentRequest,
    FulfillmentResult,
    Identity,
    IdentityNamespace,
    Merge,
    Offer,
    Partner,
    RecordedEvent,
    TouchPoint,
    ValueProvider,
    ValueRequest,
)
from prm_core.planning.offers import offer_id
from prm_core.server.state import HUB
from prm_core.testing import with_test_ingest

ANN = {"email": "ann@example.com"}
BOB = {"email": "bob@example.com"}
ANN_PHONE = {"phone": "+1 415 555 0100"}


@pytest.fixture(autouse=True)
def only_the_plugins_of_the_test(monkeypatch):
    monkeypatch.setenv("PRM_DISABLE_PLUGIN_AUTOLOAD", "1")


def when(minute: int, hour: int = 8) -> datetime:
    return datetime(2026, 11, 23, hour, minute, tzinfo=UTC)


def event(event_id: str, minute: int = 0, event_type: str = "page", *, hour: int = 8, **fields: Any) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "occurred_at": when(minute, hour).isoformat(), **fields}


class Api:
    """The hub's HTTP API with a key per scope."""

    def __init__(self, client: Any, make_key: Any) -> None:
        self.client, self.make_key = client, make_key
        self.keys: dict[str, str] = {}

    @property
    def hub(self) -> Hub:
        return self.client.app[HUB]

    async def call(self, method: str, path: str, scope: str, body: Any = None, expect: int = 200) -> Any:
        if scope not in self.keys:
            self.keys[scope] = await self.make_key(scope)
        headers = {"Authorization": f"Bearer {self.keys[scope]}"}
        resp = await self.client.request(method, path, json=body, headers=headers)
        assert resp.status == expect, await resp.text()
        return await resp.json()

    async def events(self, tp: str, *events: dict[str, Any], expect: int = 200) -> Any:
        """Post events and wait until they are recorded (by the answer's position): the hooks
        under test run as the hub records them. What was accepted, and the duplicates."""
        answer = await self.call("POST", f"/v1/touchpoints/{tp}/events", f"touchpoint:{tp}", {"events": events}, expect)
        if expect != 200:
            return answer
        await recorded(self.hub, answer)
        return counts(answer)

    async def request(self, tp: str, ev: dict[str, Any]) -> Any:
        return await self.call("POST", f"/v1/touchpoints/{tp}/requests", f"touchpoint:{tp}", ev)

    async def get(self, path: str, expect: int = 200) -> Any:
        return await self.call("GET", path, "read", expect=expect)

    async def timeline(self, ref: str) -> dict[str, dict[str, Any]]:
        view = await self.get(f"/v1/customers/{ref}?limit=200")
        return {t["event_id"]: t for t in view["timeline"]}


@pytest.fixture
def api(hub_client, make_key) -> Api:
    return Api(hub_client, make_key)


def no_hub_starts_with(*plugins: Any, config: Config) -> Any:
    """Starting a hub with ``plugins``, to await inside ``pytest.raises``: it must not start."""

    async def start() -> None:
        async with Hub.open(config, plugins=plugins, autoload=True):
            pytest.fail("the hub started")

    return start()


# ---- plugins ------------------------------------------------------------------------------------


class Named:
    """A plugin object: pluggy names an object registered in code by its ``__name__``."""

    def __init__(self, name: str) -> None:
        self.__name__ = name


class Kiosk(Named):
    """Registers one touch point (``kiosk`` unless told), reading its budget from the config."""

    def __init__(
        self, name: str = "kiosk-plugin", *, tp: str = "kiosk", budget_ms: int = 2000, timeout: timedelta | None = None
    ) -> None:
        super().__init__(name)
        self.tp, self.budget_ms, self.timeout = tp, budget_ms, timeout
        self.configs: list[Config] = []

    @hookimpl
    def prm_touchpoints(self, config):
        self.configs.append(config)
        budget = int(config.touchpoint(self.tp).get("budget_ms", self.budget_ms))
        yield TouchPoint(name=self.tp, channel="kiosk", budget_ms=budget, dialogue_timeout=self.timeout)


class Partners(Named):
    def __init__(self, name: str, *partners: str) -> None:
        super().__init__(name)
        self.partners = partners
        self.configs: list[Config] = []

    @hookimpl
    def prm_partners(self, config):
        self.configs.append(config)
        for partner in self.partners:
            yield Partner(name=partner, role=config.partner(partner).get("role", "field_service"))


# ---- registration ---------------------------------------------------------------------------------


class TestTouchpoints:
    @pytest.fixture
    def hub_config(self, database_url):
        raw = {"touchpoints": {"kiosk": {"budget_ms": 321}}}
        return Config(database_url=database_url, public_url="http://hub.test", raw=raw)

    @pytest.fixture
    def kiosk(self):
        return Kiosk()

    @pytest.fixture
    def hub_plugins(self, kiosk):
        return [kiosk]

    async def test_a_registered_touchpoint_is_listed_and_takes_events_and_requests(self, api, kiosk, hub_config):
        assert len(kiosk.configs) == 1  # once, at start
        assert kiosk.configs[0] == with_test_ingest(hub_config)  # the test hubs wait longer for the journal
        assert await api.get("/v1/touchpoints") == {
            "touchpoints": [
                {
                    "name": "kiosk",
                    "channel": "kiosk",
                    "budget_ms": 321,
                    "dialogue_timeout_s": None,
                    "description": "",
                    "plugin": "kiosk-plugin",
                }
            ]
        }
        assert await api.events("kiosk", event("k1", identities=ANN)) == {"accepted": 1, "duplicates": 0}
        answer = await api.request("kiosk", event("k2", 1, identities=ANN))
        assert answer["budget_ms"] == 321
        assert {e: t["touchpoint"] for e, t in (await api.timeline("email:ann@example.com")).items()} == {
            "k1": "kiosk",
            "k2": "kiosk",
            answer_id("k2"): "kiosk",
        }
        assert len(kiosk.configs) == 1
        # a touch point no plugin registered does not exist
        await api.call("POST", "/v1/touchpoints/booth/events", "touchpoint:kiosk", event("b1"), expect=404)

    async def test_one_name_from_two_plugins_stops_the_hub_naming_both(self, hub_config):
        with pytest.raises(ConflictingRegistration) as caught:
            await no_hub_starts_with(Kiosk("kiosk-one"), Kiosk("kiosk-two"), config=hub_config)
        conflict = caught.value
        assert (conflict.kind, conflict.name) == ("touch point", "kiosk")
        assert {conflict.first, conflict.second} == {"kiosk-one", "kiosk-two"}
        assert "kiosk-one" in str(conflict) and "kiosk-two" in str(conflict)

    async def test_a_name_an_installed_plugin_has_is_refused_naming_its_distribution(self, hub_config, monkeypatch):
        monkeypatch.delenv("PRM_DISABLE_PLUGIN_AUTOLOAD")
        monkeypatch.delenv("PRM_DISABLED_PLUGINS", raising=False)
        with pytest.raises(ConflictingRegistration) as caught:
            await no_hub_starts_with(Kiosk("my-web", tp="web"), config=hub_config)
        version = importlib.metadata.version("prm-hub")
        assert {caught.value.first, caught.value.second} == {f"web (prm-hub {version})", "my-web"}

    class Confused(Named):
        @hookimpl
        def prm_touchpoints(self, config):
            yield Partner(name="kiosk", role="field_service")

    class Invalid(Named):
        @hookimpl
        def prm_touchpoints(self, config):
            yield TouchPoint(name="kiosk", channel="kiosk", budget_ms=0)

    @pytest.mark.parametrize(
        ("plugin", "cause"),
        [
            (Confused, "prm_touchpoints yielded Partner, expected TouchPoint"),
            (Invalid, "prm_touchpoints: TouchPoint.budget_ms must be between 1 and 60000, got 0"),
        ],
    )
    async def test_a_bad_registration_stops_the_hub_naming_the_plugin(self, hub_config, plugin, cause):
        with pytest.raises(PluginLoadError) as caught:
            await no_hub_starts_with(plugin("bad-kiosk"), config=hub_config)
        assert (caught.value.plugin, caught.value.cause) == ("bad-kiosk", cause)


class TestPartners:
    @pytest.fixture
    def hub_config(self, database_url):
        raw = {"partners": {"acme-field": {"role": "installer"}}}
        return Config(database_url=database_url, raw=raw)

    @pytest.fixture
    def partners(self):
        return Partners("partner-plugin", "acme-field", "parcel-co")

    @pytest.fixture
    def hub_plugins(self, partners):
        return [partners]

    async def test_partners_are_registered_with_their_settings_and_provider(self, hub, partners, hub_config):
        assert len(partners.configs) == 1
        assert partners.configs[0] == with_test_ingest(hub_config)
        registered = hub.registrations.partners
        assert registered.names() == ["acme-field", "parcel-co"]
        assert registered["acme-field"] == Partner(name="acme-field", role="installer")
        assert registered["parcel-co"] == Partner(name="parcel-co", role="field_service")
        assert registered.providers == {"acme-field": "partner-plugin", "parcel-co": "partner-plugin"}

    async def test_one_partner_from_two_plugins_stops_the_hub_naming_both(self, hub_config):
        with pytest.raises(ConflictingRegistration) as caught:
            await no_hub_starts_with(
                Partners("partners-a", "acme-field"), Partners("partners-b", "acme-field"), config=hub_config
            )
        conflict = caught.value
        assert (conflict.kind, conflict.name) == ("partner", "acme-field")
        assert {conflict.first, conflict.second} == {"partners-a", "partners-b"}


class Knowledge(Named):
    """Value providers: ``warranty`` answers at once; ``recalls`` (when slow) sleeps past any
    budget and notes its cancellation; ``claims`` (when broken) raises."""

    def __init__(self, name: str = "knowledge", *, slow: bool = False, broken: bool = False) -> None:
        super().__init__(name)
        self.slow, self.broken = slow, broken
        self.seen: list[tuple[str, ValueRequest, float]] = []
        self.cancelled = asyncio.Event()

    async def warranty(self, request: ValueRequest) -> dict[str, Any]:
        self.seen.append(("warranty", request, request.remaining_ms()))
        return {"product_id": request.event.event.data.get("product_id"), "plans": ["basic", "extended"]}

    async def recalls(self, request: ValueRequest) -> dict[str, Any]:
        self.seen.append(("recalls", request, request.remaining_ms()))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return {"recalls": []}

    async def claims(self, request: ValueRequest) -> dict[str, Any]:
        raise RuntimeError("the claims database is down")

    @hookimpl
    def prm_value_providers(self, config):
        yield ValueProvider(name="warranty", about="business", provide=self.warranty)
        if self.slow:
            yield ValueProvider(name="recalls", about="customer", provide=self.recalls)
        if self.broken:
            yield ValueProvider(name="claims", about="customer", provide=self.claims)


class TestValueProviders:
    @pytest.fixture
    def knowledge(self):
        return Knowledge()

    @pytest.fixture
    def hub_plugins(self, knowledge):
        return [Kiosk(budget_ms=2000), knowledge]

    async def test_knowledge_is_in_the_delivery_of_each_request(self, api, knowledge):
        await api.events("kiosk", event("e1", identities=ANN))
        assert knowledge.seen == []  # plain events ask for no value
        ev = event("r1", 1, "service.request", identities=ANN, data={"product_id": "wm-3"})
        answer = await api.request("kiosk", ev)
        assert answer["degraded"] == []
        assert answer["delivery"]["knowledge"] == {"warranty": {"product_id": "wm-3", "plans": ["basic", "extended"]}}
        ((name, request, remaining),) = knowledge.seen
        assert name == "warranty"
        assert request.event.event.id == "r1"
        assert (request.event.customer_id, request.event.dialogue_id) == (answer["customer_id"], answer["dialogue_id"])
        assert request.view.customer.id == answer["customer_id"]
        assert request.touchpoint == api.hub.touchpoint("kiosk")
        assert 0 < remaining <= 2000
        await api.request("kiosk", event("r2", 2, identities=ANN))
        assert [r.event.event.id for _, r, _ in knowledge.seen] == ["r1", "r2"]
        assert api.hub.registrations.value_providers.providers == {"warranty": "knowledge"}


class Scoped:
    """Two providers, each for one touch point's scenarios."""

    @hookimpl
    def prm_value_providers(self, config):
        async def answer(request: ValueRequest) -> dict[str, Any]:
            return {"at": request.touchpoint.name}

        yield ValueProvider(name="for-ivr", about="customer", provide=answer, touchpoints={"ivr"})
        yield ValueProvider(name="for-kiosk", about="business", provide=answer, touchpoints={"kiosk"})


class TestValueProvidersForSomeTouchPoints:
    @pytest.fixture
    def hub_plugins(self):
        return [Kiosk(budget_ms=2000), Scoped()]

    async def test_a_provider_answers_only_the_touch_points_it_serves(self, api):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        assert answer["delivery"]["knowledge"] == {"for-kiosk": {"at": "kiosk"}}


class TestSlowValueProviders:
    BUDGET_MS = 400

    @pytest.fixture
    def knowledge(self):
        return Knowledge(slow=True, broken=True)

    @pytest.fixture
    def hub_plugins(self, knowledge):
        return [Kiosk(budget_ms=self.BUDGET_MS), knowledge]

    async def test_a_late_or_failing_provider_is_named_in_degraded_and_the_answer_is_on_time(self, api, knowledge):
        started = time.monotonic()
        answer = await api.request("kiosk", event("r1", identities=ANN, data={"product_id": "wm-3"}))
        waited = time.monotonic() - started
        assert answer["degraded"] == ["value:claims", "value:recalls"]
        assert answer["delivery"]["knowledge"] == {"warranty": {"product_id": "wm-3", "plans": ["basic", "extended"]}}
        assert answer["budget_ms"] == self.BUDGET_MS
        assert answer["elapsed_ms"] >= self.BUDGET_MS * 0.5  # it waited for the deadline, then cut
        assert waited < self.BUDGET_MS / 1000 + 1.0  # the provider sleeps 30 s
        await asyncio.wait_for(knowledge.cancelled.wait(), 5)  # cancelled, not left running
        answered = (await api.timeline(answer["customer_id"]))[answer_id("r1")]
        assert answered["data"]["degraded"] == ["value:claims", "value:recalls"]


def member_number(raw: str, region: str) -> str:
    value = raw.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}-\d+", value):
        raise ValueError("is not a member number (AB-123)")
    return value


class Namespaces(Named):
    def __init__(self, name: str = "namespaces") -> None:
        super().__init__(name)
        self.normalized: list[tuple[str, str]] = []

    def member_no(self, raw: str, region: str) -> str:
        self.normalized.append((raw, region))
        return member_number(raw, region)

    @hookimpl
    def prm_identity_namespaces(self, config):
        yield IdentityNamespace(name="member_no", normalize=self.member_no)
        yield IdentityNamespace(name="kiosk_device", normalize=lambda raw, region: raw.strip().upper(), shared=True)


class MergeWatcher(Named):
    def __init__(self, name: str = "merge-watcher") -> None:
        super().__init__(name)
        self.merged: list[Merge] = []

    @hookimpl
    def prm_customers_merged(self, merge):
        self.merged.append(merge)


class TestIdentityNamespaces:
    @pytest.fixture
    def namespaces(self):
        return Namespaces()

    @pytest.fixture
    def merges(self):
        return MergeWatcher()

    @pytest.fixture
    def hub_plugins(self, namespaces, merges):
        return [Kiosk(), namespaces, merges]

    async def test_a_new_namespace_is_accepted_and_normalized(self, api, namespaces):
        assert await api.events("kiosk", event("e1", identities={"member_no": " ab-12 "})) == {
            "accepted": 1,
            "duplicates": 0,
        }
        assert namespaces.normalized == [(" ab-12 ", "US")]
        view = await api.get("/v1/customers/member_no:ab-12")  # a ref is normalized the same way
        assert view["identities"] == [{"namespace": "member_no", "value": "AB-12"}]
        assert list(await api.timeline(view["id"])) == ["e1"]

        refused = await api.events("kiosk", event("e2", identities={"member_no": "12"}), expect=422)
        assert refused["error"] == {
            "code": "invalid",
            "message": "events[0].identities.member_no is not a member number (AB-123)",
            "field": "events[0].identities.member_no",
        }
        await api.get("/v1/customers/member_no:nope", expect=422)

    async def test_a_shared_namespace_links_customers_without_merging_them(self, api, merges):
        await api.events("kiosk", event("e1", 0, identities={**ANN, "kiosk_device": "k-1"}))
        await api.events("kiosk", event("e2", 5, identities={**BOB, "kiosk_device": " K-1"}))
        ann = await api.get("/v1/customers/email:ann@example.com")
        bob = await api.get("/v1/customers/email:bob@example.com")
        assert ann["id"] != bob["id"]
        assert merges.merged == []
        for customer in (ann, bob):
            assert await api.get(f"/v1/customers/{customer['id']}/merges") == {"merges": []}
        # an event with only the shared identity goes to whoever was seen with it last
        await api.events("kiosk", event("e3", 10, identities={"kiosk_device": "k-1"}))
        await api.events("kiosk", event("e4", 15, identities={**ANN, "kiosk_device": "k-1"}))
        await api.events("kiosk", event("e5", 20, identities={"kiosk_device": "k-1"}))
        assert sorted(await api.timeline(ann["id"])) == ["e1", "e4", "e5"]
        assert sorted(await api.timeline(bob["id"])) == ["e2", "e3"]
        assert merges.merged == []

    async def test_a_builtin_name_cannot_be_registered_again(self, hub_config):
        class Again(Named):
            @hookimpl
            def prm_identity_namespaces(self, config):
                yield IdentityNamespace(name="email", normalize=lambda raw, region: raw)

        with pytest.raises(ConflictingRegistration) as caught:
            await no_hub_starts_with(Again("email-again"), config=hub_config)
        conflict = caught.value
        assert (conflict.kind, conflict.name, conflict.first, conflict.second) == (
            "identity namespace",
            "email",
            "prm_core",
            "email-again",
        )


# ---- customers ----------------------------------------------------------------------------------------


class CustomerWatcher(Named):
    def __init__(self, name: str = "customer-watcher") -> None:
        super().__init__(name)
        self.created: list[tuple[Customer, Event | None]] = []
        self.merged: list[Merge] = []
        self.unmerged: list[Merge] = []

    @hookimpl
    def prm_customer_created(self, customer, event):
        self.created.append((customer, event))

    @hookimpl
    def prm_customers_merged(self, merge):
        self.merged.append(merge)

    @hookimpl
    def prm_customers_unmerged(self, merge):
        self.unmerged.append(merge)


class TestCustomers:
    @pytest.fixture
    def watcher(self):
        return CustomerWatcher()

    @pytest.fixture
    def hub_plugins(self, watcher):
        return [Kiosk(), watcher]

    async def test_customer_created_by_the_event_that_introduced_them(self, api, watcher):
        await api.events("kiosk", event("e1", identities=ANN))
        ((customer, introduced),) = watcher.created
        view = await api.get("/v1/customers/email:ann@example.com")
        assert (customer.id, customer.kind, dict(customer.traits)) == (view["id"], "person", {})
        assert customer.created_at is not None
        assert isinstance(introduced, Event)
        assert (introduced.id, introduced.touchpoint, introduced.identities) == (
            "e1",
            "kiosk",
            (Identity("email", "ann@example.com"),),
        )
        await api.events("kiosk", event("e2", 1, identities=ANN), event("e1", identities=ANN))  # known; duplicate
        assert len(watcher.created) == 1
        await api.events("kiosk", event("e3", 2, identities=BOB))
        assert [(c.id, e.id) for c, e in watcher.created[1:]] == [
            ((await api.get("/v1/customers/email:bob@example.com"))["id"], "e3")
        ]

    async def test_customer_created_through_the_api_has_no_event(self, api, watcher):
        acme = {"kind": "organization", "traits": {"name": "Acme"}}
        body = await api.call("POST", "/v1/customers", "admin", acme, expect=201)
        ((customer, introduced),) = watcher.created
        assert introduced is None
        assert (customer.id, customer.kind, dict(customer.traits)) == (body["id"], "organization", {"name": "Acme"})

    async def test_customers_merged_when_an_event_links_identities_of_both(self, api, watcher):
        await api.events("kiosk", event("e1", 0, identities=ANN))
        await api.events("kiosk", event("e2", 1, identities=ANN_PHONE))
        (ann, _), (phone, _) = watcher.created
        assert ann.id != phone.id and watcher.merged == []
        await api.events("kiosk", event("e3", 2, identities={**ANN, **ANN_PHONE}))
        (merge,) = watcher.merged
        assert (merge.survivor_id, merge.merged_id) == (ann.id, phone.id)  # the older customer survives
        assert (merge.cause_touchpoint, merge.cause_event_id, merge.undone_at) == ("kiosk", "e3", None)
        assert "e3" in merge.reason
        # durable when the hook ran: the API shows the same merge, and the redirect
        audit = await api.get(f"/v1/customers/{phone.id}/merges")
        assert [m["id"] for m in audit["merges"]] == [merge.id]
        assert (await api.get(f"/v1/customers/{phone.id}"))["id"] == ann.id
        await api.events("kiosk", event("e4", 3, identities={**ANN, **ANN_PHONE}))
        assert len(watcher.merged) == 1
        assert len(watcher.created) == 2

    async def test_customers_unmerged_when_a_merge_is_undone(self, hub, watcher):
        for ev in (event("e1", 0, identities=ANN), event("e2", 1, identities=ANN_PHONE)):
            await hub.record(hub.parse_events(ev, "kiosk"))
        await hub.record(hub.parse_events(event("e3", 2, identities={**ANN, **ANN_PHONE}), "kiosk"))
        (merge,) = watcher.merged
        assert watcher.unmerged == []
        undone = await hub.unmerge(merge.id)
        assert watcher.unmerged == [undone]
        assert (undone.id, undone.survivor_id, undone.merged_id) == (merge.id, merge.survivor_id, merge.merged_id)
        assert undone.undone_at is not None
        assert await hub.resolve(merge.merged_id) == merge.merged_id  # a customer of its own again
        with pytest.raises(InvalidInput):
            await hub.unmerge(merge.id)
        assert len(watcher.unmerged) == 1


class Loyalty(Named):
    def __init__(self, name: str = "loyalty") -> None:
        super().__init__(name)
        self.views: list[CustomerView] = []

    @hookimpl
    def prm_enrich_view(self, view):
        self.views.append(view)
        return {"loyalty": {"customer": view.customer.id, "events": view.metrics["event_count"]}}


class Support(Named):
    @hookimpl
    async def prm_enrich_view(self, view):
        await asyncio.sleep(0)
        return {"support": {"open_cases": 1}, "id": "hijacked", "traits": {"hijacked": True}}


class Silent(Named):
    @hookimpl
    def prm_enrich_view(self, view):
        return None


class SectionReader(Named):
    def __init__(self, name: str = "section-reader") -> None:
        super().__init__(name)
        self.sections: list[dict[str, Any]] = []

    @hookimpl
    def prm_propose_offers(self, request):
        self.sections.append(dict(request.view.sections))


class TestEnrichView:
    @pytest.fixture
    def loyalty(self):
        return Loyalty()

    @pytest.fixture
    def reader(self):
        return SectionReader()

    @pytest.fixture
    def hub_plugins(self, loyalty, reader):
        return [Kiosk(), loyalty, Support("support"), Silent("silent"), reader]

    async def test_sections_appear_in_the_view_and_never_replace_core_fields(self, api, loyalty):
        await api.events("kiosk", event("e1", 0, identities=ANN), event("e2", 1, identities=ANN))
        assert loyalty.views == []
        body = await api.get("/v1/customers/email:ann@example.com")
        assert len(loyalty.views) == 1
        assert loyalty.views[0].customer.id == body["id"]
        assert body["loyalty"] == {"customer": body["id"], "events": 2}
        assert body["support"] == {"open_cases": 1}
        assert body["id"] != "hijacked" and body["traits"] == {}
        assert "silent" not in body

    async def test_sections_reach_value_delivery(self, api, reader):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        (sections,) = reader.sections
        assert sections["loyalty"] == {"customer": answer["customer_id"], "events": 1}
        assert sections["support"] == {"open_cases": 1}


# ---- dialogues ----------------------------------------------------------------------------------------


class DialogueWatcher(Named):
    def __init__(self, name: str = "dialogue-watcher") -> None:
        super().__init__(name)
        self.opened: list[tuple[Dialogue, RecordedEvent]] = []
        self.recorded: list[RecordedEvent] = []
        self.closed: list[Dialogue] = []

    @hookimpl
    def prm_dialogue_opened(self, dialogue, event):
        self.opened.append((dialogue, event))

    @hookimpl
    def prm_event_recorded(self, recorded):
        self.recorded.append(recorded)

    @hookimpl
    def prm_dialogue_closed(self, dialogue):
        self.closed.append(dialogue)


class TestDialogues:
    @pytest.fixture
    def watcher(self):
        return DialogueWatcher()

    @pytest.fixture
    def hub_plugins(self, watcher):
        return [Kiosk(), Kiosk("counter-plugin", tp="counter", timeout=timedelta(minutes=30)), watcher]

    async def test_dialogue_opened_once_by_the_event_that_opened_it(self, api, watcher):
        await api.events("kiosk", event("e1", 0, identities=ANN, dialogue="visit-1"))
        await api.events("kiosk", event("e2", 1, identities=ANN, dialogue="visit-1"))
        ((dialogue, opener),) = watcher.opened
        view = await api.get("/v1/customers/email:ann@example.com")
        assert (opener.event.id, opener.duplicate, opener.customer_id) == ("e1", False, view["id"])
        assert (dialogue.id, dialogue.ref, dialogue.touchpoint, dialogue.status) == (
            opener.dialogue_id,
            "visit-1",
            "kiosk",
            "open",
        )
        assert (dialogue.customer_id, dialogue.opened_at) == (view["id"], when(0))
        assert [d["id"] for d in view["dialogues"]] == [dialogue.id]

    async def test_event_recorded_once_per_event_never_for_a_duplicate(self, api, watcher):
        first = await api.events(
            "kiosk", event("e1", 0, identities=ANN), event("e2", 1), event("e1", 0, identities=ANN)
        )
        assert first == {"accepted": 2, "duplicates": 1}
        assert await api.events("kiosk", event("e2", 1)) == {"accepted": 0, "duplicates": 1}
        assert [(r.event.id, r.duplicate) for r in watcher.recorded] == [("e1", False), ("e2", False)]
        ann = await api.timeline("email:ann@example.com")
        assert (watcher.recorded[0].customer_id, watcher.recorded[0].dialogue_id) == (
            (await api.get("/v1/customers/email:ann@example.com"))["id"],
            ann["e1"]["dialogue"],
        )
        assert watcher.recorded[1].customer_id != watcher.recorded[0].customer_id  # e2 had no identity
        # a request turn records the request and, after it, the answer
        answer = await api.request("kiosk", event("r1", 2, identities=ANN))
        request, reply = watcher.recorded[2:]
        assert (request.event.id, reply.event.id) == ("r1", answer_id("r1"))
        assert (reply.event.type, reply.event.direction) == ("delivery", "outbound")
        assert request.customer_id == reply.customer_id == answer["customer_id"]
        assert request.dialogue_id == reply.dialogue_id == answer["dialogue_id"]

    async def test_dialogue_closed_by_an_outcome(self, api, watcher):
        await api.events("kiosk", event("e1", 0, identities=ANN, dialogue="visit-1"))
        assert watcher.closed == []
        await api.events("kiosk", event("e2", 5, identities=ANN, dialogue="visit-1", data={"outcome": "resolved"}))
        ((opened, _),) = watcher.opened
        (closed,) = watcher.closed
        assert (closed.id, closed.status, closed.outcome) == (opened.id, "closed", "resolved")
        assert closed.closed_at == when(5)
        await api.events("kiosk", event("e3", 6, identities=ANN, dialogue="visit-1", data={"note": "late"}))
        assert len(watcher.closed) == 1 and len(watcher.opened) == 1
        view = await api.get("/v1/customers/email:ann@example.com")
        assert [(d["id"], d["status"], d["outcome"]) for d in view["dialogues"]] == [(opened.id, "closed", "resolved")]

    async def test_dialogue_closed_by_the_touchpoints_inactivity_rule(self, api, watcher):
        await api.events("counter", event("c1", 0, identities=ANN))
        await api.events("counter", event("c2", 10, identities=ANN))
        assert watcher.closed == [] and len(watcher.opened) == 1
        await api.events("counter", event("c3", 0, hour=9, identities=ANN))  # 50 minutes later
        (first, _), (second, opener) = watcher.opened
        (closed,) = watcher.closed
        assert (closed.id, closed.status, closed.outcome, closed.closed_at) == (first.id, "closed", None, when(10))
        assert (second.status, opener.event.id) == ("open", "c3")


# ---- value delivery ----------------------------------------------------------------------------------


class SyncOffers(Named):
    """A generator implementation; yields more offers when the request's data says ``more``."""

    def __init__(self, name: str = "sync-offers") -> None:
        super().__init__(name)
        self.requests: list[tuple[ValueRequest, float]] = []

    @hookimpl
    def prm_propose_offers(self, request):
        self.requests.append((request, request.remaining_ms()))
        yield Offer(code="extended-warranty", title="Extended warranty", score=0.2, source=self.__name__)
        yield Offer(code="priority-line", title="Priority line", score=0.9, source=self.__name__)
        if request.event.event.data.get("more"):
            for n in range(6):
                yield Offer(code=f"extra-{n}", title=f"Extra {n}", score=0.3 + n / 100)


class AsyncOffers(Named):
    def __init__(self, name: str = "async-offers") -> None:
        super().__init__(name)
        self.requests: list[ValueRequest] = []

    @hookimpl
    async def prm_propose_offers(self, request):
        self.requests.append(request)
        await asyncio.sleep(0.01)
        return [Offer(code="dryer-200", title="Dryer 200", score=0.5, data={"price": "499.00"})]


class NoOffers(Named):
    @hookimpl
    def prm_propose_offers(self, request):
        return None


class SlowOffers(Named):
    @hookimpl
    async def prm_propose_offers(self, request):
        await asyncio.sleep(30)
        return [Offer(code="too-late", title="Too late", score=1.0)]


class TestOffers:
    @pytest.fixture
    def sync_offers(self):
        return SyncOffers()

    @pytest.fixture
    def async_offers(self):
        return AsyncOffers()

    @pytest.fixture
    def hub_plugins(self, sync_offers, async_offers):
        return [Kiosk(budget_ms=2000), sync_offers, async_offers, NoOffers("no-offers")]

    async def test_offers_of_sync_and_async_implementations_are_ranked_by_score(self, api, sync_offers, async_offers):
        await api.events("kiosk", event("e1", identities=ANN))
        assert sync_offers.requests == [] and async_offers.requests == []
        answer = await api.request("kiosk", event("r1", 1, identities=ANN))
        assert answer["degraded"] == []
        offers = answer["delivery"]["offers"]
        assert [(o["code"], o["score"]) for o in offers] == [
            ("priority-line", 0.9),
            ("dryer-200", 0.5),
            ("extended-warranty", 0.2),
        ]
        assert offers[1] == {
            "code": "dryer-200",
            "title": "Dryer 200",
            "score": 0.5,
            "source": "",
            "description": "",
            # planning gives every offer made a stable id, to match the customer's response to it
            "data": {"price": "499.00", "offer_id": offer_id("kiosk", "r1", "dryer-200")},
        }
        ((request, remaining),) = sync_offers.requests
        assert async_offers.requests == [request]  # one ValueRequest for the whole turn
        assert (request.event.event.id, request.touchpoint.name) == ("r1", "kiosk")
        assert (request.event.customer_id, request.event.dialogue_id) == (answer["customer_id"], answer["dialogue_id"])
        assert request.view.customer.id == answer["customer_id"]
        assert 0 < remaining <= 2000
        answered = (await api.timeline(answer["customer_id"]))[answer_id("r1")]
        assert answered["data"]["offers"] == ["priority-line", "dryer-200", "extended-warranty"]

    async def test_only_the_best_five_offers_are_delivered(self, api):
        answer = await api.request("kiosk", event("r1", identities=ANN, data={"more": True}))
        assert [o["code"] for o in answer["delivery"]["offers"]] == [
            "priority-line",
            "dryer-200",
            "extra-5",
            "extra-4",
            "extra-3",
        ]


class TestLateOffers:
    BUDGET_MS = 400

    @pytest.fixture
    def hub_plugins(self):
        return [Kiosk(budget_ms=self.BUDGET_MS), SyncOffers("quick-offers"), SlowOffers("slow-offers")]

    async def test_a_late_implementation_is_left_out_and_named_in_degraded(self, api):
        started = time.monotonic()
        answer = await api.request("kiosk", event("r1", identities=ANN))
        waited = time.monotonic() - started
        assert answer["degraded"] == ["offers:slow-offers"]
        assert [o["code"] for o in answer["delivery"]["offers"]] == ["priority-line", "extended-warranty"]
        assert waited < self.BUDGET_MS / 1000 + 1.0  # the slow part was cut, not waited for


class Planner(Named):
    """Plans a technician visit for a service request, and a notice when the data asks for one."""

    def __init__(self, name: str = "planner") -> None:
        super().__init__(name)
        self.requests: list[ValueRequest] = []

    @hookimpl
    def prm_plan_fulfillment(self, request):
        self.requests.append(request)
        recorded = request.event
        if recorded.event.type != "service.request":
            return
        yield FulfillmentRequest(
            id=f"ful-{recorded.event.id}",
            partner="acme-field",
            action="schedule",
            customer_id=recorded.customer_id,
            dialogue_id=recorded.dialogue_id,
            payload={"product_id": recorded.event.data.get("product_id")},
            idempotency_key=f"kiosk:{recorded.event.id}",
        )
        if recorded.event.data.get("notify"):
            yield FulfillmentRequest(
                id=f"note-{recorded.event.id}", partner="slow-post", action="notify", customer_id="x"
            )


class Fulfiller(Named):
    """Serves one partner, answering after ``delay_s``; returns ``None`` for the others."""

    def __init__(self, name: str, partner: str, delay_s: float = 0.0) -> None:
        super().__init__(name)
        self.partner, self.delay_s = partner, delay_s
        self.asked: list[FulfillmentRequest] = []

    @hookimpl
    def prm_fulfill(self, request):
        self.asked.append(request)
        if request.partner != self.partner:
            return None
        return self.work(request)

    async def work(self, request: FulfillmentRequest) -> FulfillmentResult:
        await asyncio.sleep(self.delay_s)
        return FulfillmentResult(request_id=request.id, partner=self.partner, status="confirmed", data={"slot": "9-12"})


class TestFulfillment:
    BUDGET_MS = 600

    @pytest.fixture
    def planner(self):
        return Planner()

    @pytest.fixture
    def acme(self):
        return Fulfiller("acme", "acme-field")

    @pytest.fixture
    def slow_post(self):
        return Fulfiller("slow-post-plugin", "slow-post", delay_s=30)

    @pytest.fixture
    def hub_plugins(self, planner, acme, slow_post):
        return [
            Kiosk(budget_ms=self.BUDGET_MS),
            Partners("partners", "acme-field", "slow-post"),
            planner,
            acme,
            slow_post,
        ]

    async def test_planned_work_is_fulfilled_and_the_result_delivered(self, api, planner, acme, slow_post):
        ev = event("r1", 0, "service.request", identities=ANN, data={"product_id": "wm-3"})
        answer = await api.request("kiosk", ev)
        assert answer["degraded"] == []
        assert answer["delivery"]["fulfillments"] == [
            {"request_id": "ful-r1", "partner": "acme-field", "status": "confirmed", "data": {"slot": "9-12"}}
        ]
        (request,) = planner.requests
        assert (request.event.event.id, request.event.customer_id) == ("r1", answer["customer_id"])
        planned = FulfillmentRequest(
            id="ful-r1",
            partner="acme-field",
            action="schedule",
            customer_id=answer["customer_id"],
            dialogue_id=answer["dialogue_id"],
            payload={"product_id": "wm-3"},
            idempotency_key="kiosk:r1",
        )
        assert acme.asked == slow_post.asked == [planned]  # every implementation is asked; one answers
        answered = (await api.timeline(answer["customer_id"]))[answer_id("r1")]
        assert answered["data"]["fulfillments"] == ["ful-r1"]

    async def test_nothing_planned_nothing_fulfilled(self, api, planner, acme):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        assert len(planner.requests) == 1
        assert acme.asked == []
        assert answer["delivery"]["fulfillments"] == [] and answer["degraded"] == []

    async def test_a_late_partner_is_named_in_degraded(self, api, slow_post):
        started = time.monotonic()
        ev = event("r1", 0, "service.request", identities=ANN, data={"product_id": "wm-3", "notify": True})
        answer = await api.request("kiosk", ev)
        waited = time.monotonic() - started
        assert answer["degraded"] == ["partner:slow-post"]
        assert [f["request_id"] for f in answer["delivery"]["fulfillments"]] == ["ful-r1"]
        assert [r.id for r in slow_post.asked] == ["ful-r1", "note-r1"]
        assert waited < self.BUDGET_MS / 1000 + 1.0  # the slow part was cut, not waited for


class Screen(Named):
    """Renders deliveries at the kiosk (and asks to be asked first)."""

    def __init__(self, name: str = "kiosk-screen") -> None:
        super().__init__(name)
        self.calls: list[tuple[Delivery, TouchPoint]] = []

    @hookimpl(tryfirst=True)
    def prm_render_delivery(self, delivery, touchpoint):
        self.calls.append((delivery, touchpoint))
        if touchpoint.name != "kiosk":
            return None
        return {"screen": [o.title for o in delivery.offers], "for": delivery.customer_id}


class Fallback(Named):
    """Renders everywhere except at the booth."""

    def __init__(self, name: str = "fallback-renderer") -> None:
        super().__init__(name)
        self.touchpoints: list[str] = []

    @hookimpl
    def prm_render_delivery(self, delivery, touchpoint):
        self.touchpoints.append(touchpoint.name)
        return None if touchpoint.name == "booth" else {"fallback": touchpoint.name}


class TestRenderDelivery:
    @pytest.fixture
    def screen(self):
        return Screen()

    @pytest.fixture
    def fallback(self):
        return Fallback()

    @pytest.fixture
    def hub_plugins(self, screen, fallback):
        touchpoints = [Kiosk(), Kiosk("counter-plugin", tp="counter"), Kiosk("booth-plugin", tp="booth")]
        return [*touchpoints, SyncOffers(), screen, fallback]

    async def test_the_first_result_replaces_the_delivery_and_the_rest_are_not_called(self, api, screen, fallback):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        assert answer["delivery"] == {"screen": ["Priority line", "Extended warranty"], "for": answer["customer_id"]}
        assert fallback.touchpoints == []
        ((delivery, touchpoint),) = screen.calls
        assert touchpoint == api.hub.touchpoint("kiosk")
        assert (delivery.customer_id, delivery.dialogue_id, delivery.touchpoint) == (
            answer["customer_id"],
            answer["dialogue_id"],
            "kiosk",
        )
        assert [o.code for o in delivery.offers] == ["priority-line", "extended-warranty"]
        # the rest of the answer is the core's
        assert answer["degraded"] == [] and answer["budget_ms"] == 2000

    async def test_a_none_passes_to_the_next_implementation(self, api, screen, fallback):
        answer = await api.request("counter", event("r1", identities=ANN))
        assert answer["delivery"] == {"fallback": "counter"}
        assert [t.name for _, t in screen.calls] == ["counter"] and fallback.touchpoints == ["counter"]

    async def test_without_an_answer_the_delivery_is_plain_json(self, api, screen, fallback):
        answer = await api.request("booth", event("r1", identities=ANN))
        assert fallback.touchpoints == ["booth"]
        delivery = answer["delivery"]
        assert set(delivery) == {"customer", "knowledge", "offers", "fulfillments"}
        assert delivery["customer"]["id"] == answer["customer_id"]
        assert [o["code"] for o in delivery["offers"]] == ["priority-line", "extended-warranty"]
        assert (delivery["knowledge"], delivery["fulfillments"]) == ({}, [])


# ---- plugins that fail: the hub goes on and names them ---------------------------------------------------


class RaisingOnRecord(Named):
    @hookimpl
    def prm_event_recorded(self, recorded):
        raise RuntimeError("the dashboard is down")


class RaisingAsyncView(Named):
    @hookimpl
    async def prm_enrich_view(self, view):
        raise RuntimeError("the loyalty service is down")


class SlowView(Named):
    @hookimpl
    async def prm_enrich_view(self, view):
        await asyncio.sleep(10.0)
        return {"slow": True}


class RaisingPlanner(Named):
    @hookimpl
    def prm_plan_fulfillment(self, request):
        raise RuntimeError("the planner is confused")
        yield  # a generator: it raises only when iterated


class OddKnowledge(Named):
    @hookimpl
    def prm_value_providers(self, config):
        async def odd(request):
            return "not a mapping"

        yield ValueProvider(name="odd", about="business", provide=odd)


class RaisingOffers(Named):
    @hookimpl
    def prm_propose_offers(self, request):
        raise RuntimeError("the offer engine is down")


def plugins(*factories: Any) -> Any:
    """``hub_plugins`` for one test: a fresh list of plugins per run."""
    return pytest.mark.parametrize("hub_plugins", [lambda: [f() for f in factories]], indirect=True, ids=["plugins"])


class TestFailingPlugins:
    @pytest.fixture
    def hub_plugins(self, request):
        return request.param()

    @plugins(Kiosk, DialogueWatcher, lambda: RaisingOnRecord("raising"))
    async def test_a_failing_notification_does_not_silence_other_plugins(self, api, hub_plugins):
        watcher = hub_plugins[1]
        assert await api.events("kiosk", event("e1", identities=ANN)) == {"accepted": 1, "duplicates": 0}
        assert [r.event.id for r in watcher.recorded] == ["e1"]

    @plugins(Kiosk, Loyalty, lambda: RaisingAsyncView("raising-view"))
    async def test_an_async_enrich_view_that_raises_does_not_fail_the_view(self, api):
        await api.events("kiosk", event("e1", identities=ANN))
        body = await api.get("/v1/customers/email:ann@example.com")
        assert body["loyalty"]["events"] == 1

    @plugins(lambda: Kiosk(budget_ms=300), lambda: SlowView("slow-view"))
    async def test_a_slow_enrich_view_does_not_delay_the_answer_past_the_budget(self, api):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        assert answer["elapsed_ms"] < 5000  # the enrichment sleeps 10 s: it was cut, not waited for
        assert answer["degraded"] == ["view:slow-view"]

    @plugins(Kiosk, lambda: RaisingPlanner("raising-planner"))
    async def test_a_plan_fulfillment_generator_that_raises_does_not_fail_the_request(self, api):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        assert answer["delivery"]["fulfillments"] == []

    @plugins(Kiosk, lambda: OddKnowledge("odd-knowledge"))
    async def test_a_provider_that_returns_no_mapping_is_named_in_degraded(self, api):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        assert answer["degraded"] == ["value:odd"]

    @plugins(Kiosk, lambda: RaisingOffers("raising-offers"))
    async def test_an_offers_implementation_that_raises_at_once_is_named_in_degraded(self, api):
        answer = await api.request("kiosk", event("r1", identities=ANN))
        assert answer["degraded"] == ["offers:raising-offers"]

    async def test_a_conflict_names_the_first_registered_plugin_first(self, database_url):
        config = Config(database_url=database_url)
        with pytest.raises(ConflictingRegistration) as caught:
            await no_hub_starts_with(Kiosk("kiosk-one"), Kiosk("kiosk-two"), config=config)
        assert (caught.value.first, caught.value.second) == ("kiosk-one", "kiosk-two")


# ---- the hub's lifetime: prm_hub_started and prm_hub_stopping -----------------------------------


class Listener(Named):
    """A plugin object a lifetime plugin registers on its hub: hears that hub's events."""

    def __init__(self) -> None:
        super().__init__("listener")
        self.heard: list[str] = []

    @hookimpl
    def prm_event_recorded(self, recorded):
        self.heard.append(recorded.event.id)


class Lifetime(Named):
    """Starts a listener of its own for each hub and stops it with the hub, as the call center does."""

    def __init__(self, name: str = "lifetime", *, fails: bool = False) -> None:
        super().__init__(name)
        self.fails = fails
        self.listeners: dict[int, Listener] = {}
        self.started: list[Hub] = []
        self.stopped: list[Hub] = []

    @hookimpl
    async def prm_hub_started(self, hub):
        await asyncio.sleep(0)  # awaited by the hub, on its loop
        if self.fails:
            raise RuntimeError("cannot start")
        listener = Listener()
        hub.pm.register(listener)
        self.listeners[id(hub)] = listener
        # the hub is whole by now: it records
        await hub.record(hub.parse_events(event("started", identities=ANN), "kiosk"))
        self.started.append(hub)

    @hookimpl
    async def prm_hub_stopping(self, hub):
        await asyncio.sleep(0)
        listener = self.listeners.pop(id(hub), None)
        if listener is not None:
            hub.pm.unregister(listener)
        self.stopped.append(hub)


class Closer(Named):
    """Closes what it opened when the hub stops; ``fails``: raises instead."""

    def __init__(self, name: str, *, fails: bool = False) -> None:
        super().__init__(name)
        self.fails = fails
        self.stopped: list[Hub] = []

    @hookimpl
    async def prm_hub_stopping(self, hub):
        await asyncio.sleep(0)  # awaited by the hub, on its loop
        self.stopped.append(hub)
        if self.fails:
            raise RuntimeError("cannot close")


class OldCloser(Named):
    """Written when the hook received the configuration only."""

    def __init__(self, name: str = "old-closer") -> None:
        super().__init__(name)
        self.stopped: list[Config] = []

    @hookimpl
    def prm_hub_stopping(self, config):
        self.stopped.append(config)


class TestHubLifetime:
    async def test_started_once_with_the_whole_hub_before_the_caller_gets_it(self, hub_config):
        lifetime = Lifetime()
        async with Hub.open(hub_config, plugins=[Kiosk(), lifetime]) as hub:
            assert lifetime.started == [hub] and lifetime.stopped == []
            listener = lifetime.listeners[id(hub)]
            assert listener.heard == ["started"]
            # the object it registered hears this hub's events from then on
            await hub.record(hub.parse_events(event("e1", 1, identities=ANN), "kiosk"))
            assert listener.heard == ["started", "e1"]
        assert lifetime.stopped == [hub]
        assert hub.pm.get_plugin("listener") is None  # unregistered by prm_hub_stopping

    async def test_stopping_is_called_once_with_the_hub_and_awaited(self, hub_config):
        closer = Closer("closer")
        async with Hub.open(hub_config, plugins=[Kiosk(), closer], autoload=True) as hub:
            await hub.record(hub.parse_events(event("e1", identities=ANN), "kiosk"))
            assert closer.stopped == []
        assert closer.stopped == [hub]

    async def test_a_failing_start_stops_the_hub_naming_the_plugin(self, hub_config):
        failing, other = Lifetime("failing-start", fails=True), Closer("closer")
        with pytest.raises(RuntimeError, match="cannot start") as caught:
            await no_hub_starts_with(Kiosk(), other, failing, config=hub_config)
        assert "raised by plugin 'failing-start' in prm_hub_started" in caught.value.__notes__
        # what had started was stopped: the stopping hooks ran
        assert len(other.stopped) == 1 and len(failing.stopped) == 1

    async def test_a_failing_plugin_is_logged_and_the_others_still_close(self, hub_config, log_capture):
        failing, other = Closer("failing-closer", fails=True), Closer("other-closer")
        async with Hub.open(hub_config, plugins=[failing, other], autoload=True) as hub:
            pass
        assert failing.stopped == other.stopped == [hub]
        (line,) = [e for e in log_capture.entries if e.get("hook") == "prm_hub_stopping"]
        assert (line["plugin"], line["error"], line["level"]) == ("failing-closer", "RuntimeError", "error")

    async def test_the_old_signature_still_works_with_a_warning_naming_the_plugin(self, hub_config):
        old = OldCloser()
        with pytest.warns(DeprecationWarning, match="plugin 'old-closer': the 'config' parameter of prm_hub_stopping"):
            async with Hub.open(hub_config, plugins=[old]):
                pass
        assert old.stopped == [hub_config]

    async def test_the_new_signature_draws_no_warning(self, hub_config, recwarn):
        async with Hub.open(hub_config, plugins=[Closer("closer"), Lifetime(), Kiosk()]):
            pass
        assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning) and "prm_" in str(w.message)]
