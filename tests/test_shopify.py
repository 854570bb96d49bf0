"""Shopify order webhooks, signed as Shopify signs them, against a real server and database."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
import sqlalchemy as sa
from prm_shopify import PATH

from prm_core.config import Config
from prm_core.server.state import HUB
from prm_core.store.tables import customers, events
from prm_core.testing.conformance import TouchPointConformance

SECRET = "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"
SHOP = "appliance-demo.myshopify.com"

# shaped as Shopify's documented orders/create payload (API 2024-10), trimmed of fields the hub ignores
ORDER: dict[str, Any] = {
    "id": 5940139491234,
    "admin_graphql_api_id": "gid://shopify/Order/5940139491234",
    "name": "#1001",
    "order_number": 1001,
    "email": "Jon@Example.com",
    "phone": None,
    "created_at": "2026-11-22T19:05:27-05:00",
    "processed_at": "2026-11-22T19:05:26-05:00",
    "currency": "USD",
    "presentment_currency": "USD",
    "financial_status": "pending",
    "taxes_included": False,
    "subtotal_price": "378.00",
    "total_discounts": "20.00",
    "total_line_items_price": "398.00",
    "total_tax": "31.84",
    "total_price": "419.84",
    "payment_gateway_names": ["shopify_payments"],
    "source_name": "web",
    "customer": {
        "id": 6147919642668,
        "email": "jon@example.com",
        "phone": "+16135551111",
        "first_name": "Jon",
        "last_name": "Snow",
    },
    "billing_address": {
        "first_name": "Jon",
        "last_name": "Snow",
        "address1": "123 Amoebobacterieae St",
        "address2": "",
        "city": "Ottawa",
        "province": "Ontario",
        "zip": "K2P0V6",
        "country": "Canada",
        "country_code": "CA",
    },
    "line_items": [
        {
            "id": 866550311766439020,
            "variant_id": 808950810,
            "product_id": 632910392,
            "title": "IPod Nano - 8GB",
            "name": "IPod Nano - 8GB - Pink",
            "sku": "IPOD2008PINK",
            "vendor": "Apple",
            "quantity": 1,
            "price": "199.00",
            "total_discount": "0.00",
            "discount_allocations": [{"amount": "10.00", "discount_application_index": 0}],
            "tax_lines": [{"price": "15.12", "rate": 0.08, "title": "State tax"}],
        },
        {
            "id": 141249953214522974,
            "variant_id": 49148385,
            "product_id": 632910392,
            "title": "IPod Nano - 8GB",
            "name": "IPod Nano - 8GB - Red",
            "sku": "IPOD2008RED",
            "vendor": "Apple",
            "quantity": 1,
            "price": "199.00",
            "total_discount": "0.00",
            "discount_allocations": [{"amount": "10.00", "discount_application_index": 0}],
            "tax_lines": [{"price": "15.12", "rate": 0.08, "title": "State tax"}],
        },
    ],
    "shipping_lines": [
        {
            "id": 271878346596884015,
            "title": "Generic Shipping",
            "code": "Generic Shipping",
            "price": "10.00",
            "discount_allocations": [],
            "tax_lines": [{"price": "1.60", "rate": 0.16, "title": "Shipping tax"}],
        }
    ],
}

# shaped as Shopify's documented refunds/create payload
REFUND: dict[str, Any] = {
    "id": 929361464,
    "order_id": 5940139491234,
    "created_at": "2026-11-25T10:12:01-05:00",
    "processed_at": "2026-11-25T10:12:01-05:00",
    "note": "wrong colour",
    "restock": True,
    "admin_graphql_api_id": "gid://shopify/Refund/929361464",
    "refund_line_items": [
        {
            "id": 1058498307,
            "line_item_id": 141249953214522974,
            "quantity": 1,
            "restock_type": "return",
            "location_id": 24826418,
            "subtotal": 189.0,
            "total_tax": 15.12,
            "line_item": copy.deepcopy(ORDER["line_items"][1]),
        }
    ],
    "transactions": [
        {
            "id": 1068278509,
            "order_id": 5940139491234,
            "kind": "refund",
            "gateway": "shopify_payments",
            "status": "success",
            "amount": "204.12",
            "currency": "USD",
        }
    ],
    "order_adjustments": [],
}


@pytest.fixture
def hub_config(database_url: str) -> Config:
    settings = {"touchpoints": {"pos": {"shopify_secret": SECRET}}}
    return Config(database_url=database_url, public_url="http://hub.test", raw=settings)


def signed(payload: Any, topic: str, webhook_id: str, *, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(payload).encode()
    digest = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    return raw, {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": digest,
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-API-Version": "2024-10",
        "X-Shopify-Triggered-At": "2026-11-23T00:05:27.000Z",
    }


async def count(hub_client, table=events) -> int:
    hub = hub_client.app[HUB]
    return await hub.store.read(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


async def test_an_order_then_its_payment_then_a_refund(hub_client, make_key):
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    raw, headers = signed(ORDER, "orders/create", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert response.status == 200, await response.text()
    assert await response.json() == {"accepted": 1, "duplicates": 0}
    # Shopify redelivers the same webhook: acknowledged, not processed again
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert await response.json() == {"accepted": 0, "duplicates": 1}
    # orders/paid names the same order (now paid): the same transaction, recorded once
    paid = {**ORDER, "financial_status": "paid"}
    raw, headers = signed(paid, "orders/paid", "0e0b6bb9-1c4b-4f7e-9b0f-7d1b9b0c6a11")
    assert await (await hub_client.post(PATH, data=raw, headers=headers)).json() == {"accepted": 0, "duplicates": 1}

    view = await (await hub_client.get("/v1/customers/email:jon@example.com", headers=read)).json()
    m = view["metrics"]
    assert m["order_count"] == 1
    assert m["revenue_by_currency"] == {"USD": "388.00"}  # 378.00 of goods and 10.00 of shipping, before tax
    assert m["last_purchase_at"] == "2026-11-23T00:05:26Z"
    (sale,) = [t for t in view["timeline"] if t["type"] == "pos.sale"]
    assert sale["event_id"] == f"pos/{SHOP}/shopify/2026-11-22/5940139491234"
    assert sale["data"]["source"] == "shopify"
    assert [li["item_id"] for li in sale["data"]["line_items"]] == ["IPOD2008PINK", "IPOD2008RED", "shipping"]
    assert sale["data"]["line_items"][0]["extended_amount"] == "189.00"
    assert view["memberships"][0]["name"] == "Household"  # from the billing address

    raw, headers = signed(REFUND, "refunds/create", "6a1e8f40-2f8a-4b0a-9f43-1d8f0b1f2e33")
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert response.status == 200, await response.text()
    view = await (await hub_client.get("/v1/customers/email:jon@example.com", headers=read)).json()
    m = view["metrics"]
    assert m["order_count"] == 1 and m["return_count"] == 1
    assert m["revenue_by_currency"] == {"USD": "199.00"}
    (returned,) = [t for t in view["timeline"] if t["type"] == "pos.return"]
    assert returned["data"]["original_transaction"] == sale["event_id"]
    assert returned["data"]["revenue"] == "-189.00"
    assert await count(hub_client, customers) == 2  # Jon and his household


def resent(headers: dict[str, str], n: int, topic: str) -> dict[str, str]:
    """The headers of a captured delivery, with what the signature does not cover changed."""
    return {
        **headers,
        "X-Shopify-Webhook-Id": f"replayed-{n}",
        "X-Shopify-Shop-Domain": f"shop-{n}.myshopify.com",
        "X-Shopify-Triggered-At": f"2026-12-0{n + 1}T00:00:00.000Z",
        "X-Shopify-Topic": topic,
    }


async def test_a_replayed_order_with_new_unsigned_headers_is_a_duplicate(hub_client, make_key):
    """Only the body is signed: the webhook id, the shop domain and the topic are not, so a
    captured order resent with new ones is the same order, counted once."""
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    raw, headers = signed(ORDER, "orders/create", "first-delivery")
    assert await (await hub_client.post(PATH, data=raw, headers=headers)).json() == {"accepted": 1, "duplicates": 0}
    paid_raw, paid_headers = signed({**ORDER, "financial_status": "paid"}, "orders/paid", "paid-delivery")
    refund_raw, refund_headers = signed(REFUND, "refunds/create", "refund-delivery")
    assert (await hub_client.post(PATH, data=refund_raw, headers=refund_headers)).status == 200
    before = await count(hub_client)
    for n in range(3):
        for body, original, topic in (
            (raw, headers, "orders/create"),
            (raw, headers, "orders/paid"),
            (paid_raw, paid_headers, "orders/paid"),
            (refund_raw, refund_headers, "refunds/create"),
        ):
            response = await hub_client.post(PATH, data=body, headers=resent(original, n, topic))
            assert response.status == 200, await response.text()
            assert (await response.json())["accepted"] == 0
    # a refund resent as if it were an order (or the reverse) is refused or a duplicate, never counted
    for body, original, topic in ((refund_raw, refund_headers, "orders/create"), (raw, headers, "refunds/create")):
        response = await hub_client.post(PATH, data=body, headers=resent(original, 9, topic))
        assert response.status in (200, 422), await response.text()
        if response.status == 200:
            assert (await response.json())["accepted"] == 0
    assert await count(hub_client) == before
    view = await (await hub_client.get("/v1/customers/email:jon@example.com", headers=read)).json()
    assert view["metrics"]["order_count"] == 1
    assert view["metrics"]["return_count"] == 1
    assert view["metrics"]["revenue_by_currency"] == {"USD": "199.00"}


@pytest.mark.parametrize(
    "forge",
    [
        lambda raw, h: (raw, {**h, "X-Shopify-Hmac-Sha256": base64.b64encode(b"0" * 32).decode()}),
        lambda raw, h: (raw.replace(b"419.84", b"0.01"), h),
        lambda raw, h: (raw, {k: v for k, v in h.items() if k != "X-Shopify-Hmac-Sha256"}),
        lambda raw, h: signed(ORDER, "orders/create", "x", secret="not-the-secret"),
    ],
    ids=["wrong-signature", "tampered-body", "unsigned", "other-secret"],
)
async def test_a_forged_webhook_is_refused_and_writes_nothing(hub_client, forge):
    raw, headers = forge(*signed(ORDER, "orders/create", "c1"))
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert await count(hub_client) == 0
    assert await count(hub_client, customers) == 0


async def test_an_order_that_does_not_add_up_is_a_422_naming_it(hub_client):
    raw, headers = signed({**ORDER, "total_price": "500.00"}, "orders/create", "c2")
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "total"  # not the lines plus tax
    assert await count(hub_client) == 0


async def test_other_topics_are_acknowledged_and_ignored(hub_client):
    raw, headers = signed({"id": 1}, "customers/create", "c3")
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert response.status == 200
    assert (await response.json())["ignored"] == "customers/create"
    assert await count(hub_client) == 0


async def test_without_a_configured_secret_nothing_is_accepted(database_url, aiohttp_client):
    from prm_core.server.app import create_app

    client = await aiohttp_client(create_app(Config(database_url=database_url)))
    raw, headers = signed(ORDER, "orders/create", "c4", secret="")
    assert (await client.post(PATH, data=raw, headers=headers)).status == 401


class TestConformance(TouchPointConformance):
    """The POS touch point: Shopify webhooks for events, the transaction route for requests."""

    touchpoint = "pos"

    @pytest.fixture
    def hub_config(self, database_url: str) -> Config:
        settings = {"touchpoints": {"pos": {"shopify_secret": SECRET}}}
        return Config(database_url=database_url, public_url="http://hub.test", raw=settings)

    @staticmethod
    def _order(e: dict) -> dict:
        order = copy.deepcopy(ORDER)
        order["id"] = int(hashlib.sha256(e["id"].encode()).hexdigest()[:12], 16)
        order["email"] = e["identities"]["email"]
        order["created_at"] = order["processed_at"] = e["occurred_at"]
        order["customer"].update(e.get("data", {}), email=e["identities"]["email"], phone=e["identities"]["phone"])
        return order

    async def send_events(self, client, key, batch):
        response = None
        for e in batch:
            raw, headers = signed(self._order(e), "orders/create", e["id"])
            if key is None:
                del headers["X-Shopify-Hmac-Sha256"]
            response = await client.post(PATH, data=raw, headers=headers)
        return response

    async def send_raw(self, client, key, body):
        digest = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
        headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": digest, "X-Shopify-Shop-Domain": SHOP}
        return await client.post(PATH, data=body, headers=headers)

    async def forge(self, client, batch):
        raw, headers = signed(self._order(batch[0]), "orders/create", batch[0]["id"], secret="forged")
        return await client.post(PATH, data=raw, headers=headers)

    async def send_request(self, client, key, event):
        from test_pos import sale

        body = sale(seq=int(hashlib.sha256(event["id"].encode()).hexdigest()[:8], 16))
        body["customer_ref"] = {"email": event["identities"]["email"], "phone": event["identities"]["phone"]}
        return await client.post(
            "/v1/touchpoints/pos/transactions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
