"""Square webhooks, signed as Square signs them (checked with Square's own SDK helper)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
import sqlalchemy as sa
from prm_square import PATH
from square.utils.webhooks_helper import verify_signature

from prm_core.config import Config
from prm_core.server.state import HUB
from prm_core.store.tables import customers, events

KEY = "Ek7r3sYVbP2PfNn6oHkNJg"
PUBLIC_URL = "https://hub.example.com"
NOTIFICATION_URL = PUBLIC_URL + PATH

# shaped as Square's documented payment.updated notification (API 2024-10-17)
PAYMENT_EVENT: dict[str, Any] = {
    "merchant_id": "6SSW7HV8K2ST5",
    "type": "payment.updated",
    "event_id": "6a8f5f28-54a1-4eb0-a98a-3111513fd4fc",
    "created_at": "2026-11-23T14:31:11.342Z",
    "data": {
        "type": "payment",
        "id": "hYy9pRFVxpDsO1FB05SunFWUe9JZY",
        "object": {
            "payment": {
                "id": "hYy9pRFVxpDsO1FB05SunFWUe9JZY",
                "created_at": "2026-11-23T14:31:09.086Z",
                "updated_at": "2026-11-23T14:31:11.198Z",
                "amount_money": {"amount": 12999, "currency": "USD"},
                "tip_money": {"amount": 200, "currency": "USD"},
                "total_money": {"amount": 13199, "currency": "USD"},
                "approved_money": {"amount": 13199, "currency": "USD"},
                "status": "COMPLETED",
                "delay_duration": "PT168H",
                "source_type": "CARD",
                "card_details": {
                    "status": "CAPTURED",
                    "card": {"card_brand": "VISA", "last_4": "1111", "exp_month": 11, "exp_year": 2028},
                    "entry_method": "KEYED",
                },
                "location_id": "S8GWD5R9QB376",
                "order_id": "03O3USaPaAaFnI6kkwB1JxGgBvaZY",
                "buyer_email_address": "Ann@Example.com",
                "receipt_number": "hYy9",
                "receipt_url": "https://squareup.com/receipt/preview/hYy9pRFVxpDsO1FB05SunFWUe9JZY",
                "version": 2,
            }
        },
    },
}

ORDER_EVENT: dict[str, Any] = {
    "merchant_id": "6SSW7HV8K2ST5",
    "type": "order.updated",
    "event_id": "4b8e5c91-9f5f-4a8f-8f1d-2f1e3a9b5c10",
    "created_at": "2026-11-23T14:31:12.000Z",
    "data": {
        "type": "order_updated",
        "id": "03O3USaPaAaFnI6kkwB1JxGgBvaZY",
        "object": {
            "order_updated": {
                "created_at": "2026-11-23T14:31:00.000Z",
                "location_id": "S8GWD5R9QB376",
                "order_id": "03O3USaPaAaFnI6kkwB1JxGgBvaZY",
                "state": "COMPLETED",
                "updated_at": "2026-11-23T14:31:12.000Z",
                "version": 4,
            }
        },
    },
}


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return Config(
        database_url=database_url,
        public_url=PUBLIC_URL,
        raw={"touchpoints": {"pos": {"square_signature_key": KEY}}},
    )


def signed(notification: Any, *, key: str = KEY, url: str = NOTIFICATION_URL) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(notification)
    signature = base64.b64encode(hmac.new(key.encode(), (url + body).encode(), hashlib.sha256).digest()).decode()
    return body.encode(), {"Content-Type": "application/json", "x-square-hmacsha256-signature": signature}


def square_accepts(raw: bytes, headers: dict[str, str]) -> bool:
    """What Square's own SDK says of a notification and its signature header."""
    return verify_signature(
        request_body=raw.decode(),
        signature_header=headers.get("x-square-hmacsha256-signature", ""),
        signature_key=KEY,
        notification_url=NOTIFICATION_URL,
    )


async def count(hub_client, table=events) -> int:
    hub = hub_client.app[HUB]
    return await hub.store.read(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


async def test_a_completed_payment_is_a_sale_once(hub_client, make_key):
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    raw, headers = signed(PAYMENT_EVENT)
    assert square_accepts(raw, headers)
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert response.status == 200, await response.text()
    assert await response.json() == {"accepted": 1, "duplicates": 0}
    # redelivered by Square: the same event_id
    assert await (await hub_client.post(PATH, data=raw, headers=headers)).json() == {"accepted": 0, "duplicates": 1}
    # another notification about the same payment: the same transaction
    again = copy.deepcopy(PAYMENT_EVENT)
    again["event_id"] = "0c6f0c43-3b0e-4b35-8a6d-4d5f0b7b8a21"
    again["data"]["object"]["payment"]["version"] = 3
    raw, headers = signed(again)
    assert await (await hub_client.post(PATH, data=raw, headers=headers)).json() == {"accepted": 0, "duplicates": 1}

    view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=read)).json()
    m = view["metrics"]
    assert m["order_count"] == 1
    assert m["revenue_by_currency"] == {"USD": "129.99"}  # the tip is not revenue
    (sale,) = [t for t in view["timeline"] if t["type"] == "pos.sale"]
    assert sale["event_id"] == "pos/S8GWD5R9QB376/square/2026-11-23/hYy9pRFVxpDsO1FB05SunFWUe9JZY"
    assert sale["data"]["tenders"] == [{"type": "card", "amount": "129.99", "change": "0"}]


async def test_minor_units_follow_the_currency(hub_client, make_key):
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    yen = copy.deepcopy(PAYMENT_EVENT)
    yen["event_id"] = "yen-1"
    payment = yen["data"]["object"]["payment"]
    payment["id"] = "yenPayment1"
    payment["amount_money"] = {"amount": 1500, "currency": "JPY"}
    raw, headers = signed(yen)
    assert (await hub_client.post(PATH, data=raw, headers=headers)).status == 200
    view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=read)).json()
    assert view["metrics"]["revenue_by_currency"] == {"JPY": "1500.00"}


async def test_orders_and_unfinished_payments_record_nothing(hub_client):
    approved = copy.deepcopy(PAYMENT_EVENT)
    approved["type"] = "payment.created"
    approved["event_id"] = "approved-1"
    approved["data"]["object"]["payment"]["status"] = "APPROVED"
    for notification in (ORDER_EVENT, approved, {**ORDER_EVENT, "type": "order.created", "event_id": "o-2"}):
        raw, headers = signed(notification)
        response = await hub_client.post(PATH, data=raw, headers=headers)
        assert response.status == 200
        assert await response.json() == {"accepted": 0, "duplicates": 0}
    assert await count(hub_client) == 0


@pytest.mark.parametrize(
    "forge",
    [
        lambda: signed(PAYMENT_EVENT, key="not-the-key"),
        lambda: signed(PAYMENT_EVENT, url="https://attacker.example.com" + PATH),
        lambda: (signed(PAYMENT_EVENT)[0].replace(b"12999", b"1"), signed(PAYMENT_EVENT)[1]),
        lambda: (signed(PAYMENT_EVENT)[0], {"Content-Type": "application/json"}),
    ],
    ids=["other-key", "other-url", "tampered-body", "unsigned"],
)
async def test_a_forged_notification_is_refused_and_writes_nothing(hub_client, forge):
    raw, headers = forge()
    assert not square_accepts(raw, headers)  # Square's SDK agrees it is forged
    response = await hub_client.post(PATH, data=raw, headers=headers)
    assert response.status == 401
    assert await count(hub_client) == 0
    assert await count(hub_client, customers) == 0


REFUND_EVENT: dict[str, Any] = {
    "merchant_id": "6SSW7HV8K2ST5",
    "type": "refund.updated",
    "event_id": "9f3c2a71-5d0e-4c3b-b8a4-63a1c2e0d111",
    "created_at": "2026-11-24T09:12:40.000Z",
    "data": {
        "type": "refund",
        "id": "hYy9pRFVxpDsO1FB05SunFWUe9JZY_KlWP8IC1557ddwc9QWTKrCVU6m0JXDz15R2Qym5eQfR",
        "object": {
            "refund": {
                "id": "hYy9pRFVxpDsO1FB05SunFWUe9JZY_KlWP8IC1557ddwc9QWTKrCVU6m0JXDz15R2Qym5eQfR",
                "amount_money": {"amount": 2999, "currency": "USD"},
                "created_at": "2026-11-24T09:12:38.000Z",
                "location_id": "S8GWD5R9QB376",
                "order_id": "haOyDuHiqtAXMk0d8pDKXpL7Jg4F",
                "payment_id": "hYy9pRFVxpDsO1FB05SunFWUe9JZY",
                "reason": "Cable does not fit",
                "status": "COMPLETED",
                "updated_at": "2026-11-24T09:12:40.000Z",
                "version": 10,
            }
        },
    },
}


async def test_a_completed_refund_is_a_return_of_its_payment(hub_client, make_key):
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    assert (await hub_client.post(PATH, data=signed(PAYMENT_EVENT)[0], headers=signed(PAYMENT_EVENT)[1])).status == 200
    pending = copy.deepcopy(REFUND_EVENT)
    pending["type"], pending["event_id"] = "refund.created", "refund-created-1"
    pending["data"]["object"]["refund"]["status"] = "PENDING"
    for notification in (pending, REFUND_EVENT):
        raw, headers = signed(notification)
        assert square_accepts(raw, headers)
        response = await hub_client.post(PATH, data=raw, headers=headers)
        assert response.status == 200, await response.text()
    view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=read)).json()
    m = view["metrics"]
    assert (m["order_count"], m["return_count"]) == (1, 1)
    assert m["revenue_by_currency"] == {"USD": "100.00"}
    (returned,) = [t for t in view["timeline"] if t["type"] == "pos.return"]
    assert returned["data"]["original_transaction"].endswith("/hYy9pRFVxpDsO1FB05SunFWUe9JZY")


async def test_a_replayed_notification_with_new_unsigned_headers_is_a_duplicate(hub_client, make_key):
    """Square signs the URL and the body; everything that names a delivery or a transaction
    (``event_id``, the payment and refund ids, ``location_id``) is read from the signed body,
    so a captured notification resent with new headers is counted once."""
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    deliveries = [signed(PAYMENT_EVENT), signed(REFUND_EVENT)]
    for raw, headers in deliveries:
        assert (await hub_client.post(PATH, data=raw, headers=headers)).status == 200
    before = await count(hub_client)
    for n in range(3):
        for raw, headers in deliveries:
            unsigned = {
                "Square-Retry-Number": str(n + 1),
                "Square-Retry-Reason": "http_timeout",
                "Square-Initial-Delivery-Timestamp": f"2026-12-0{n + 1}T00:00:00Z",
                "X-Forwarded-For": f"203.0.113.{n}",
                "User-Agent": f"replayer/{n}",
            }
            response = await hub_client.post(PATH, data=raw, headers={**headers, **unsigned})
            assert response.status == 200, await response.text()
            assert await response.json() == {"accepted": 0, "duplicates": 1}
    assert await count(hub_client) == before
    view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=read)).json()
    assert (view["metrics"]["order_count"], view["metrics"]["return_count"]) == (1, 1)
