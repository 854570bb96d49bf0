"""What an event's revenue teaches the purchase metrics, checked against figures worked out by
hand (the running totals of tests/test_pos_metrics.py are compared with a recount that reads
events the same way, so they cannot see a mistake in the reading itself)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from prm_core.merging import MAX_CATEGORIES, NO_CURRENCY, Purchase, PurchaseTotals, event_purchase, event_revenue

T0 = datetime(2026, 11, 23, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "revenue"),
    [
        ({"revenue": 12.5}, Decimal("12.5")),
        ({"revenue": "12.50"}, Decimal("12.50")),
        ({"revenue": -3}, Decimal(-3)),
        ({"revenue": 0}, Decimal(0)),
        ({"revenue": "999999999999.99"}, Decimal("999999999999.99")),
        ({"revenue": -(10**12) + 1}, Decimal(-(10**12) + 1)),
    ],
)
def test_revenue_is_data_revenue_as_a_decimal(data, revenue):
    assert event_revenue(data) == revenue


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"revenue": None},
        {"revenue": True},
        {"revenue": False},
        {"revenue": "twelve"},
        {"revenue": "NaN"},
        {"revenue": "Infinity"},
        {"revenue": 10**12},
        {"revenue": -(10**12)},
        {"revenue": [1]},
        None,
        "revenue",
        [("revenue", 1)],
    ],
)
def test_what_is_not_revenue(data):
    assert event_revenue(data) is None
    assert event_purchase(data) is None


def test_a_sale_counts_one_order_and_each_category_once():
    data = {
        "revenue": "30.00",
        "currency": "EUR",
        "line_items": [
            {"category": " Shoes "},
            {"category": "Hats"},
            {"category": "Shoes"},
            {"category": "x" * 100},
            {"category": "   "},
            {"category": 5},
            {"sku": "no-category"},
            "not an item",
        ],
    }
    assert event_purchase(data) == Purchase(Decimal("30.00"), "EUR", 1, False, ("Hats", "Shoes", "x" * 64))
    assert event_purchase({**data, "transaction_type": "sale"}) == event_purchase(data)
    assert event_purchase({**data, "transaction_type": "exchange"}).orders == 1
    assert event_purchase({**data, "transaction_type": 5}).orders == 1
    assert event_purchase({**data, "transaction_type": ["void"]}).orders == 1


def test_a_return_counts_no_order_and_no_category():
    data = {"revenue": "-10", "currency": "USD", "transaction_type": "return", "line_items": [{"category": "Shoes"}]}
    assert event_purchase(data) == Purchase(Decimal(-10), "USD", 0, True, ())


def test_a_void_takes_its_order_and_categories_back():
    data = {"revenue": "-30", "currency": "USD", "transaction_type": "void", "line_items": [{"category": "Shoes"}]}
    assert event_purchase(data) == Purchase(Decimal(-30), "USD", -1, False, ("Shoes",))


@pytest.mark.parametrize("currency", [None, "eur", "EURO", "E1R", 978, ""])
def test_revenue_without_a_valid_currency_is_kept_under_xxx(currency):
    data = {"revenue": 5} if currency is None else {"revenue": 5, "currency": currency}
    purchase = event_purchase(data)
    assert purchase is not None and purchase.currency == NO_CURRENCY == "XXX"
    assert event_purchase({"revenue": 5, "line_items": {"category": "Shoes"}}).categories == ()


def test_totals_add_up_sales_returns_and_voids():
    totals = PurchaseTotals()
    assert totals.empty
    totals.add_purchase(Purchase(Decimal("30"), "EUR", 1, False, ("Hats", "Shoes")), T0)
    assert not totals.empty
    totals.add_purchase(Purchase(Decimal("20"), "USD", 1, False, ("Shoes",)), T0 + timedelta(days=2))
    totals.add_purchase(Purchase(Decimal("-5"), "USD", 0, True, ()), T0 + timedelta(days=3))
    totals.add_purchase(Purchase(Decimal("-30"), "EUR", -1, False, ("Hats", "Shoes")), T0 + timedelta(days=4))
    totals.add_purchase(Purchase(Decimal("7"), "EUR", 1, False, ()), T0 + timedelta(days=1))  # arrives late
    assert totals.columns() == {
        "order_count": 2,
        "return_count": 1,
        "lifetime_revenue": Decimal("22"),
        "revenue_by_currency": {"EUR": "7", "USD": "15"},
        "categories": {"Shoes": 1},
        "last_purchase_at": T0 + timedelta(days=2),  # returns and voids are not purchases
    }


def test_totals_of_two_customers_add():
    a = PurchaseTotals(2, 1, Decimal("50"), {"EUR": Decimal("50")}, Counter({"Shoes": 2}), T0)
    b = PurchaseTotals(1, 2, Decimal("5"), {"EUR": Decimal("2"), "USD": Decimal("3")}, Counter({"Hats": 1}), None)
    a.add(b)
    assert a == PurchaseTotals(
        3, 3, Decimal("55"), {"EUR": Decimal("52"), "USD": Decimal("3")}, Counter({"Shoes": 2, "Hats": 1}), T0
    )
    later = PurchaseTotals(last_purchase=T0 + timedelta(days=1))
    b.add(later)
    assert b.last_purchase == T0 + timedelta(days=1)
    assert PurchaseTotals(returns=1).empty is False
    assert PurchaseTotals(revenue=Decimal(1)).empty is False
    assert PurchaseTotals(by_currency={"EUR": Decimal(0)}).empty is False
    assert PurchaseTotals(categories=Counter({"Hats": 1})).empty is False
    assert PurchaseTotals(last_purchase=T0).empty is False
    assert PurchaseTotals(orders=-1).empty is False


def test_the_most_bought_categories_are_kept_ties_by_name_and_a_negative_count_too():
    counts = Counter({f"c{n:02}": 2 for n in range(MAX_CATEGORIES + 5)})
    counts.update({"zz-most": 9, "gone": 0})
    counts["voided-first"] = -1
    kept = PurchaseTotals(categories=counts).columns()["categories"]
    assert len(kept) == MAX_CATEGORIES == 50
    assert next(iter(kept.items())) == ("zz-most", 9)
    assert list(kept)[1:] == [f"c{n:02}" for n in range(MAX_CATEGORIES - 1)]
    assert "gone" not in kept
    few = PurchaseTotals(categories=Counter({"b": 1, "a": 1, "voided-first": -1, "gone": 0})).columns()["categories"]
    assert few == {"a": 1, "b": 1, "voided-first": -1}
    assert list(few) == ["a", "b", "voided-first"]


def test_a_new_customer_without_a_purchase_gets_the_empty_totals_columns():
    """Recording writes a new customer's purchase columns from a literal, not from an empty
    PurchaseTotals each time: the two must not drift apart."""
    from prm_core.merging import PurchaseTotals
    from prm_core.recording import _no_purchases

    assert _no_purchases() == PurchaseTotals().columns()
    assert _no_purchases()["revenue_by_currency"] is not _no_purchases()["revenue_by_currency"]
