"""The POS touch point: canonical transactions over a real aiohttp server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import sqlalchemy as sa
from positions import after

from prm_core import hookimpl
from prm_core.model import Offer
from prm_core.server.state import HUB
from prm_core.store.tables import customers, events, memberships

PATH = "/v1/touchpoints/pos/transactions"


class Accessories:
    """Offers an accessory for what was bought, as planning's catalog rule would."""

    __name__ = "accessories"

    @hookimpl
    def prm_propose_offers(self, request):
        if request.touchpoint.name != "pos":
            return None
        categories = {li.get("category") for li in request.event.event.data.get("line_items", [])}
        if "washers" in categories:
            return [
                Offer(
                    code="DET-10",
                    title="10% off detergent",
                    description="Your new washer deserves the best detergent: 10% off on your next visit.",
                    score=0.8,
                    source="accessories",
                )
            ]
        return []


class Slow:
    """An offer source that never answers within the POS budget."""

    __name__ = "slow"

    @hookimpl
    async def prm_propose_offers(self, request):
        await asyncio.sleep(30)
        return []


@pytest.fixture
def hub_plugins():
    return [Accessories(), Slow()]


def sale(seq: int = 1, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transaction_type": "sale",
        "store_id": "S042",
        "workstation_id": "POS3",
        "sequence_number": seq,
        "business_day": "2026-11-23",
        "occurred_at": "2026-11-23T10:15:00Z",
        "currency": "EUR",
        "line_items": [
            {
                "item_id": "WM-300",
                "description": "Washer WM-300",
                "category": "washers",
                "quantity": 1,
                "unit_price": "499.00",
                "extended_amount": "499.00",
            },
            {
                "item_id": "HOSE-2",
                "description": "Inlet hose",
                "category": "accessories",
                "quantity": 2,
                "unit_price": "9.95",
                "extended_amount": "19.90",
            },
        ],
        "tax": "98.58",
        "total": "617.48",
        "tenders": [{"type": "card", "amount": "600.00"}, {"type": "cash", "amount": "20.00", "change": "2.52"}],
        "customer_ref": {"loyalty_card": "LC-1001"},
    }
    body.update(changes)
    return body


async def keys(make_key) -> tuple[dict[str, str], dict[str, str]]:
    pos, read = await make_key("touchpoint:pos"), await make_key("read")
    return {"Authorization": f"Bearer {pos}"}, {"Authorization": f"Bearer {read}"}


async def count(hub_client, table=events) -> int:
    hub = hub_client.app[HUB]
    return await hub.store.read(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


async def view(hub_client, read, ref="loyalty_card:LC-1001") -> dict[str, Any]:
    response = await hub_client.get(f"/v1/customers/{ref}", headers=read)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_a_sale_is_recorded_as_a_dialogue_and_answered_with_receipt_offers(hub_client, make_key):
    pos, read = await keys(make_key)
    response = await hub_client.post(PATH, json=sale(), headers=pos)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["transaction_id"] == "pos/S042/POS3/2026-11-23/1"
    assert body["duplicate"] is False
    assert body["budget_ms"] == 300
    receipt = body["delivery"]
    assert "10% off detergent" in receipt["receipt_lines"]
    assert "CODE: DET-10" in receipt["receipt_lines"]
    assert all(len(line) <= 40 for line in receipt["receipt_lines"])
    assert [o["code"] for o in receipt["offers"]] == ["DET-10"]
    assert "offers:slow" in body["degraded"]  # cut at the budget, not waited for

    v = await view(hub_client, read)
    m = v["metrics"]
    assert m["order_count"] == 1
    assert m["lifetime_revenue"] == "518.90"  # net of tax
    assert m["revenue_by_currency"] == {"EUR": "518.90"}
    assert m["average_sale"] == "518.90"
    assert m["categories"] == {"accessories": 1, "washers": 1}
    assert m["last_purchase_at"] == "2026-11-23T10:15:00Z"
    (dialogue,) = v["dialogues"]
    assert dialogue["ref"] == "pos/S042/POS3/2026-11-23/1"
    assert dialogue["intent"] == "sale" and dialogue["outcome"] == "sold"
    types = sorted(t["type"] for t in v["timeline"])
    assert types == ["delivery", "offer.made", "pos.sale"]
    (made,) = [t for t in v["timeline"] if t["type"] == "offer.made"]
    assert made["direction"] == "outbound" and made["dialogue"] == dialogue["id"]
    assert made["data"]["offer"] == "DET-10" and made["data"]["in_reply_to"] == body["transaction_id"]
    (sold,) = [t for t in v["timeline"] if t["type"] == "pos.sale"]
    assert sold["data"]["revenue"] == "518.90" and sold["data"]["currency"] == "EUR"
    assert sold["data"]["line_items"][1]["extended_amount"] == "19.90"


async def test_a_replay_is_a_duplicate_and_a_reused_key_with_other_content_a_conflict(hub_client, make_key):
    pos, read = await keys(make_key)
    assert (await hub_client.post(PATH, json=sale(), headers=pos)).status == 200
    before = await count(hub_client)
    # the same transaction again, with the sequence number as a zero-padded string
    again = await hub_client.post(PATH, json=sale(seq="0001"), headers=pos)
    assert again.status == 200
    assert (await again.json())["duplicate"] is True
    assert await count(hub_client) == before
    other = sale(total="600.00", tax="81.10", tenders=[{"type": "card", "amount": "600.00"}])
    response = await hub_client.post(PATH, json=other, headers=pos)
    assert response.status == 409
    assert (await response.json())["error"]["field"] == "sequence_number"
    assert await count(hub_client) == before
    assert (await view(hub_client, read))["metrics"]["order_count"] == 1


def _broken(path: str, value: Any) -> dict[str, Any]:
    body = sale()
    node: Any = body
    *parents, last = path
    for key in parents:
        node = node[key]
    node[last] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_broken(("line_items", 1, "extended_amount"), "19.95"), "line_items[1].extended_amount"),
        (_broken(("total",), "617.50"), "total"),
        (_broken(("tenders", 1, "change"), "2.50"), "tenders"),
        (_broken(("line_items", 0, "unit_price"), True), "line_items[0].unit_price"),
        (_broken(("line_items", 0, "unit_price"), "NaN"), "line_items[0].unit_price"),
        (_broken(("line_items", 0, "unit_price"), "499.00001"), "line_items[0].unit_price"),
        (_broken(("line_items", 0, "quantity"), 0), "line_items[0].quantity"),
        (_broken(("currency",), "euro"), "currency"),
        (_broken(("business_day",), "23/11/2026"), "business_day"),
        (_broken(("store_id",), None), "store_id"),
        (_broken(("transaction_type",), "layaway"), "transaction_type"),
        (_broken(("customer_ref",), {"email": "not an email"}), "customer_ref.email"),
        (_broken(("customer_ref",), {"passport": "X1"}), "customer_ref.passport"),
        (_broken(("tenders",), []), "tenders"),
        (_broken(("transaction_type",), "void"), "original_transaction"),
    ],
)
async def test_what_does_not_add_up_is_refused_naming_the_field_and_writes_nothing(hub_client, make_key, body, field):
    pos, _read = await keys(make_key)
    response = await hub_client.post(PATH, json=body, headers=pos)
    assert response.status == 422, await response.text()
    assert (await response.json())["error"]["field"] == field
    assert await count(hub_client) == 0
    assert await count(hub_client, customers) == 0


async def test_json_numbers_are_read_as_decimals_never_floats(hub_client, make_key):
    pos, read = await keys(make_key)
    # 3 x 0.1 is 0.30000000000000004 in binary floating point: as decimals it adds up
    raw = (
        '{"store_id": "S1", "workstation_id": "W1", "sequence_number": 7, "business_day": "2026-11-23",'
        ' "currency": "USD", "customer_ref": {"email": "ann@example.com"},'
        ' "line_items": [{"item_id": "PEN", "category": "office", "quantity": 3, "unit_price": 0.1,'
        ' "extended_amount": 0.3}], "total": 0.3, "tenders": [{"type": "cash", "amount": 0.3}]}'
    )
    response = await hub_client.post(PATH, data=raw, headers={**pos, "Content-Type": "application/json"})
    assert response.status == 200, await response.text()
    assert (await view(hub_client, read, "email:ann@example.com"))["metrics"]["revenue_by_currency"] == {"USD": "0.30"}
    # a weighed item: 0.35 kg at 3.99 is printed rounded to the cent
    weighed = sale(
        seq=8,
        line_items=[{"item_id": "CHEESE", "quantity": "0.35", "unit_price": "3.99", "extended_amount": "1.40"}],
        tax="0",
        total="1.40",
        tenders=[{"type": "cash", "amount": "1.40"}],
    )
    assert (await hub_client.post(PATH, json=weighed, headers=pos)).status == 200


async def test_a_return_reduces_revenue_and_keeps_the_order(hub_client, make_key):
    pos, read = await keys(make_key)
    assert (await hub_client.post(PATH, json=sale(), headers=pos)).status == 200
    # the hose comes back, with the receipt, and no loyalty card: the receipt says whose it was
    refund = sale(
        seq=2,
        transaction_type="return",
        occurred_at="2026-11-24T09:00:00Z",
        business_day="2026-11-24",
        line_items=[sale()["line_items"][1]],
        tax="3.78",
        total="23.68",
        tenders=[{"type": "card", "amount": "23.68"}],
        original_transaction={"business_day": "2026-11-23", "sequence_number": 1},
    )
    del refund["customer_ref"]
    response = await hub_client.post(PATH, json=refund, headers=pos)
    assert response.status == 200, await response.text()
    m = (await view(hub_client, read))["metrics"]
    assert m["order_count"] == 1
    assert m["return_count"] == 1
    assert m["revenue_by_currency"] == {"EUR": "499.00"}
    assert m["lifetime_revenue"] == "499.00"
    assert m["last_purchase_at"] == "2026-11-23T10:15:00Z"  # a return is no purchase
    assert await count(hub_client, customers) == 1


async def test_a_void_undoes_its_sale_once(hub_client, make_key):
    pos, read = await keys(make_key)
    assert (await hub_client.post(PATH, json=sale(), headers=pos)).status == 200
    void = sale(seq=2, transaction_type="void", original_transaction={"sequence_number": 1}, tenders=[])
    del void["customer_ref"]
    void["line_items"] = []
    void["tax"] = "0"
    response = await hub_client.post(PATH, json=void, headers=pos)
    assert response.status == 200, await response.text()
    assert (await response.json())["transaction_id"] == "pos/S042/POS3/2026-11-23/1/void"
    v = await view(hub_client, read)
    m = v["metrics"]
    assert m["order_count"] == 0
    assert m["revenue_by_currency"] == {"EUR": "0.00"}
    assert m["categories"] == {}
    # the void joins the dialogue of the sale it undoes
    (dialogue,) = v["dialogues"]
    voided = [t for t in v["timeline"] if t["type"] == "pos.void"]
    assert voided and voided[0]["dialogue"] == dialogue["id"]
    # the same void again is a duplicate; another void of the same sale is refused
    assert (await (await hub_client.post(PATH, json=void, headers=pos)).json())["duplicate"] is True
    second = {**void, "sequence_number": 3}
    assert (await hub_client.post(PATH, json=second, headers=pos)).status == 409
    unknown = {**void, "sequence_number": 4, "original_transaction": {"sequence_number": 99}}
    response = await hub_client.post(PATH, json=unknown, headers=pos)
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "original_transaction"
    wrong_total = sale(seq=5)
    assert (await hub_client.post(PATH, json=wrong_total, headers=pos)).status == 200
    bad = {**void, "sequence_number": 6, "total": "1.00", "original_transaction": {"sequence_number": 5}}
    response = await hub_client.post(PATH, json=bad, headers=pos)
    assert (await response.json())["error"]["field"] == "total"


async def test_only_a_pos_key_may_write(hub_client, make_key):
    response = await hub_client.post(PATH, json=sale())
    assert response.status == 401
    web = await make_key("touchpoint:web")
    response = await hub_client.post(PATH, json=sale(), headers={"Authorization": f"Bearer {web}"})
    assert response.status == 403
    assert await count(hub_client) == 0


async def test_households_group_a_shared_phone_and_an_address(hub_client, make_key):
    pos, read = await keys(make_key)
    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    home = {"line1": "12 Elm Street", "city": "Springfield", "postal_code": "12345", "country": "US"}
    ann = sale(seq=1, customer_ref={"loyalty_card": "LC-1", "phone": "+1 415 555 0100", "address": home})
    assert (await hub_client.post(PATH, json=ann, headers=pos)).status == 200
    # Bob lives there too, writes the address his own way, and has a card of his own
    bob_home = {**home, "line1": "12  ELM STREET."}
    bob = sale(seq=2, customer_ref={"loyalty_card": "LC-2", "address": bob_home})
    assert (await hub_client.post(PATH, json=bob, headers=pos)).status == 200
    a, b = await view(hub_client, read, "loyalty_card:LC-1"), await view(hub_client, read, "loyalty_card:LC-2")
    assert a["id"] != b["id"]
    (household,) = a["memberships"]
    assert [g["group_id"] for g in b["memberships"]] == [household["group_id"]]
    assert household["kind"] == "group" and household["name"] == "Household"
    h = await view(hub_client, read, household["group_id"])
    assert {m["id"] for m in h["members"]} == {a["id"], b["id"]}
    assert h["metrics"]["order_count"] == 2
    assert h["metrics"]["revenue_by_currency"] == {"EUR": "1037.80"}
    assert h["metrics"]["categories"] == {"accessories": 2, "washers": 2}
    assert all("Elm" not in i["value"] for i in h["identities"])

    # the phone becomes the household's: Carol, buying with it and her own card, joins them
    response = await hub_client.put("/v1/identities/phone:+14155550100", json={"shared": True}, headers=admin)
    assert response.status == 200
    carol = sale(seq=3, customer_ref={"loyalty_card": "LC-3", "phone": "(415) 555-0100"})
    assert (await hub_client.post(PATH, json=carol, headers=pos)).status == 200
    c = await view(hub_client, read, "loyalty_card:LC-3")
    assert c["id"] not in (a["id"], b["id"])
    (phone_household,) = c["memberships"]
    assert phone_household["group_id"] != household["group_id"]
    hub = hub_client.app[HUB]
    in_household = sa.select(memberships).where(memberships.c.group_id == phone_household["group_id"])
    rows = await hub.store.read(lambda conn: list(conn.execute(in_household)))
    assert {r.member_id for r in rows} == {c["id"]}
    # a personal phone groups nobody
    dave = sale(seq=4, customer_ref={"loyalty_card": "LC-4", "phone": "+1 415 555 0199"})
    assert (await hub_client.post(PATH, json=dave, headers=pos)).status == 200
    assert (await view(hub_client, read, "loyalty_card:LC-4"))["memberships"] == []


async def test_revenue_is_kept_per_currency(hub_client, make_key):
    pos, read = await keys(make_key)
    assert (await hub_client.post(PATH, json=sale(seq=1), headers=pos)).status == 200
    usd = copy.deepcopy(sale(seq=2, currency="USD"))
    assert (await hub_client.post(PATH, json=usd, headers=pos)).status == 200
    m = (await view(hub_client, read))["metrics"]
    assert m["revenue_by_currency"] == {"EUR": "518.90", "USD": "518.90"}
    assert m["order_count"] == 2
    # euros and dollars, and no rate for dollars ([money.rates]): never added, nor averaged
    assert m["average_sale"] is None and m["mixed_currencies"] == ["EUR", "USD"]


async def test_merge_adds_purchases_and_unmerge_gives_them_back(hub_client, make_key):
    pos, read = await keys(make_key)
    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    web = {"Authorization": f"Bearer {await make_key('touchpoint:web')}"}
    assert (await hub_client.post(PATH, json=sale(seq=1), headers=pos)).status == 200
    # the same person ordered online before, without a currency (as Segment sends it)
    order = {
        "id": "web-order-1",
        "type": "Order Completed",
        "occurred_at": "2026-11-22T09:00:00Z",
        "identities": {"email": "ann@example.com"},
        "data": {"revenue": 20},
    }
    resp = await hub_client.post("/v1/touchpoints/web/events", json=order, headers=web)
    assert resp.status == 200
    before_card = (await view(hub_client, read))["metrics"]
    before_web = (await view(hub_client, read, f"email:ann@example.com{after(await resp.json())}"))["metrics"]
    assert before_web["revenue_by_currency"] == {"XXX": "20.00"}
    # a sale with both the card and the email: one customer
    both = sale(seq=2, currency="USD", customer_ref={"loyalty_card": "LC-1001", "email": "ann@example.com"})
    assert (await hub_client.post(PATH, json=both, headers=pos)).status == 200
    merged = (await view(hub_client, read))["metrics"]
    assert merged["order_count"] == 3
    assert merged["revenue_by_currency"] == {"EUR": "518.90", "USD": "518.90", "XXX": "20.00"}
    assert merged["categories"] == {"accessories": 2, "washers": 2}
    assert merged["last_purchase_at"] == "2026-11-23T10:15:00Z"
    merges = (await (await hub_client.get("/v1/customers/loyalty_card:LC-1001/merges", headers=read)).json())["merges"]
    (merge,) = merges
    assert (await hub_client.post(f"/v1/merges/{merge['id']}/undo", headers=admin)).status == 200
    # the merged-away customer (the web one, the younger) gets its own purchases back; the USD
    # sale was recorded for the survivor after the merge and stays with it
    card_id = (await view(hub_client, read))["id"]
    assert merge["survivor_id"] == card_id
    after_card = (await view(hub_client, read))["metrics"]
    after_web = (await view(hub_client, read, "email:ann@example.com"))["metrics"]
    assert after_web == {**before_web, "last_seen_at": after_web["last_seen_at"]}
    assert after_card["order_count"] == 2
    assert after_card["revenue_by_currency"] == {"EUR": "518.90", "USD": "518.90"}
    assert after_card["categories"] == {"accessories": 2, "washers": 2}
    assert before_card["last_purchase_at"] == after_card["last_purchase_at"]


async def test_the_same_sale_by_another_way_is_a_duplicate(hub_client, make_key):
    """Sent live by the till, then again (as in the night's POSLog) with other tender names,
    descriptions and amounts spelt differently: one sale."""
    pos, read = await keys(make_key)
    assert (await hub_client.post(PATH, json=sale(), headers=pos)).status == 200
    again = sale()
    again["line_items"][0]["description"] = "WASHER WM300 8KG"
    again["line_items"][0]["extended_amount"] = "499"
    again["tenders"] = [{"type": "CreditDebit", "amount": "600"}, {"type": "Cash", "amount": "20", "change": "2.52"}]
    response = await hub_client.post(PATH, json=again, headers=pos)
    assert response.status == 200, await response.text()
    assert (await response.json())["duplicate"] is True
    assert (await view(hub_client, read))["metrics"]["order_count"] == 1
