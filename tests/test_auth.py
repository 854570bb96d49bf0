"""How a request presents its key (Bearer, or HTTP Basic with the key as user name), what a
missing, malformed or refused key answers, scopes, counting a request once against its
key's rate limit, and identities under a public key kept as claims."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import make_mocked_request

from prm_core.config import Config
from prm_core.keys import ApiKey
from prm_core.model import Event, Identity
from prm_core.server.auth import as_claims
from prm_core.server.state import API_KEY

CUSTOMER = "/v1/customers/user_id:u-1"
EVENTS = "/v1/touchpoints/web/events"


@pytest.fixture
def hub_config(database_url: str) -> Config:
    # secret keys limited to 2 calls a minute: a request authenticated twice must count once;
    # a route that takes no key (the agents' sign-in), 2 calls a minute per client address
    limits = {"rate_limit": "2/minute", "rate_limit_keyless": "2/minute"}
    return Config(database_url=database_url, public_url="http://hub.test", raw={"server": limits})


def basic(user: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def answer(hub_client, headers: dict[str, str], path: str = CUSTOMER) -> tuple[int, dict]:
    resp = await hub_client.get(path, headers=headers)
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    "how", ["Bearer {key}", "bearer {key}", "BEARER   {key}  ", "basic:{key}:", "basic:{key}:anything"]
)
async def test_a_key_is_presented_as_bearer_or_as_the_basic_user_name(hub_client, make_key, how):
    key = await make_key("read")
    if how.startswith("basic:"):
        _, user, password = how.format(key=key).split(":")
        headers = basic(user, password)
    else:
        headers = {"Authorization": how.format(key=key)}
    status, body = await answer(hub_client, headers)
    assert status == 404, body  # authenticated: the customer is unknown


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer   "},
        {"Authorization": "Token x"},
    ],
)
async def test_no_key_is_401_asking_for_a_bearer_key(hub_client, headers):
    resp = await hub_client.get(CUSTOMER, headers=headers)
    body = await resp.json()
    assert resp.status == 401
    assert body["error"]["code"] == "unauthorized"
    assert "an API key is required" in body["error"]["message"]
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="prm"'


async def test_the_key_as_basic_password_with_no_user_is_401(hub_client, make_key):
    key = await make_key("read")
    status, body = await answer(hub_client, basic("", key))
    assert status == 401
    assert "an API key is required" in body["error"]["message"]


@pytest.mark.parametrize("credentials", ["not base64!", "//79/g==", "YQ"])
async def test_basic_credentials_that_are_not_base64_text_are_401(hub_client, credentials):
    status, body = await answer(hub_client, {"Authorization": f"Basic {credentials}"})
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["message"] == "the Basic credentials are not valid base64"


async def test_basic_credentials_with_characters_outside_base64_are_refused(hub_client, make_key):
    key = await make_key("read")
    encoded = base64.b64encode(f"{key}:".encode()).decode()
    # a lenient decoder would skip the "!" and find the key
    status, body = await answer(hub_client, {"Authorization": f"Basic {encoded[:8]}!{encoded[8:]}"})
    assert status == 401
    assert body["error"]["message"] == "the Basic credentials are not valid base64"


async def test_an_invalid_key_is_401_saying_so(hub_client):
    status, body = await answer(hub_client, {"Authorization": "Bearer prm_0000000000000000_" + "x" * 43})
    assert status == 401
    assert body["error"]["message"] == "the API key is not valid or was revoked"


async def test_a_scope_that_does_not_grant_the_route_is_403_naming_both(hub_client, make_key):
    web = await make_key("touchpoint:web")
    status, body = await answer(hub_client, {"Authorization": f"Bearer {web}"})
    assert status == 403
    assert body["error"]["message"] == "this key's scope 'touchpoint:web' does not grant 'read'"


def test_a_route_that_takes_one_of_several_scopes_names_them_all_when_none_is_granted():
    """``require(request, scope, *others)`` of a plugin's route: the 403 names every scope
    that would do."""
    from prm_core.server.auth import grants
    from prm_core.server.errors import ApiError

    pos = ApiKey("k1", "till", "touchpoint:pos", False, datetime(2026, 11, 23, tzinfo=UTC))
    with pytest.raises(ApiError) as refused:
        grants(make_mocked_request("GET", "/"), pos, "read", "touchpoint:web")
    assert refused.value.status == 403
    assert refused.value.message == "this key's scope 'touchpoint:pos' grants neither 'read' nor 'touchpoint:web'"
    assert grants(make_mocked_request("GET", "/"), pos, "read", "touchpoint:pos") is pos


async def test_a_public_key_only_sends_events(hub_client, make_key):
    public = await make_key("touchpoint:web", public=True)
    status, body = await answer(hub_client, {"Authorization": f"Bearer {public}"})
    assert status == 403
    assert body["error"]["message"] == "a public key only sends events; this route needs a secret key"


async def test_a_request_counts_once_against_its_keys_rate_limit(hub_client, make_key):
    """The events route authenticates, finds the touch point, then checks the scope: one call."""
    web = await make_key("touchpoint:web")
    statuses = []
    for n in range(3):
        ev = {"id": f"r{n}", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u"}}
        resp = await hub_client.post(EVENTS, json=ev, headers={"Authorization": f"Bearer {web}"})
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert resp.headers["Retry-After"].isdigit()


async def test_two_keys_count_apart(hub_client, make_key):
    first, second = await make_key("read"), await make_key("read")
    assert [(await answer(hub_client, {"Authorization": f"Bearer {first}"}))[0] for _ in range(3)] == [404, 404, 429]
    assert (await answer(hub_client, {"Authorization": f"Bearer {second}"}))[0] == 404


async def test_a_route_without_a_key_counts_calls_per_address_and_answers_429_past_the_limit(hub_client):
    """The agents' sign-in takes no key: its calls (either method) are counted per client address."""
    session = "/v1/agents/session"
    first = await hub_client.post(session, json={"code": "not-a-code"})
    second = await hub_client.delete(session)
    assert [first.status, second.status] == [401, 401]
    third = await hub_client.post(session, json={"code": "not-a-code"})
    assert third.status == 429
    wait = third.headers["Retry-After"]
    assert 1 <= int(wait) <= 60
    error = (await third.json())["error"]
    assert (error["code"], error["message"]) == ("rate_limited", f"too many calls from this address; retry in {wait} s")
    # a key's calls are counted against the key, not against the address's keyless calls
    assert (await answer(hub_client, {"Authorization": "Bearer prm_0000000000000000_" + "x" * 43}))[0] == 401


class TestWithEveryLimitOff:
    @pytest.fixture
    def hub_config(self, database_url: str) -> Config:
        off = {"rate_limit": "off", "rate_limit_public": "off", "rate_limit_keyless": "off"}
        return Config(database_url=database_url, public_url="http://hub.test", raw={"server": off})

    async def test_a_route_without_a_key_counts_nothing(self, hub_client):
        statuses = [(await hub_client.post("/v1/agents/session", json={"code": "not-a-code"})).status for _ in range(4)]
        assert statuses == [401] * 4


def event(**identities: str) -> Event:
    return Event(
        id="e1",
        type="identify",
        touchpoint="web",
        occurred_at=datetime(2026, 11, 23, 8, tzinfo=UTC),
        identities=tuple(Identity(ns, v) for ns, v in sorted(identities.items())),
        data={"page": "/"},
    )


def request_with(key: ApiKey | None):
    request = make_mocked_request("POST", EVENTS)
    if key is not None:
        request[API_KEY] = key
    return request


PUBLIC = ApiKey("k1", "", "touchpoint:web", True, datetime(2026, 1, 1, tzinfo=UTC))
SECRET = ApiKey("k2", "", "touchpoint:web", False, datetime(2026, 1, 1, tzinfo=UTC))


def test_under_a_public_key_identities_other_than_the_device_id_are_claims():
    ev = event(anonymous_id="dev-1", email="ann@example.com", user_id="u-1")
    (claimed,) = as_claims(request_with(PUBLIC), [ev])
    assert claimed.identities == (Identity("anonymous_id", "dev-1"),)
    assert claimed.data == {"page": "/", "claimed_identities": {"email": "ann@example.com", "user_id": "u-1"}}
    assert claimed.verified is False


def test_under_a_public_key_a_device_id_alone_is_kept_but_unverified():
    ev = event(anonymous_id="dev-1")
    (kept,) = as_claims(request_with(PUBLIC), [ev, ev])[:1]
    assert kept.identities == ev.identities
    assert kept.data == {"page": "/"}
    assert kept.verified is False
    assert len(as_claims(request_with(PUBLIC), [ev, event(email="ann@example.com")])) == 2


@pytest.mark.parametrize("key", [SECRET, None])
def test_under_a_secret_key_or_none_identities_are_verified(key):
    ev = event(anonymous_id="dev-1", email="ann@example.com")
    assert as_claims(request_with(key), [ev]) == [ev]


def test_a_route_can_say_whether_its_callers_are_verified():
    ev = event(email="ann@example.com")
    (claimed,) = as_claims(request_with(SECRET), [ev], verified=False)
    assert claimed.identities == () and claimed.verified is False
    assert as_claims(request_with(PUBLIC), [ev], verified=True) == [ev]
