"""Receipt offers: a delivery rendered as lines a till prints under the sale."""

from __future__ import annotations

import textwrap
from typing import Any

from prm_core.plugin import Delivery, offer_json

__all__ = ["RECEIPT_WIDTH", "render_receipt"]

RECEIPT_WIDTH = 40  # characters on an 80 mm thermal receipt in its usual font
MAX_RECEIPT_OFFERS = 3


def render_receipt(delivery: Delivery, width: int = RECEIPT_WIDTH) -> dict[str, Any]:
    """``{"receipt_lines": [...], "offers": [...], "customer": {...}}``: the offers to print
    (at most three, best first), each a title, its description wrapped to the paper and
    its code to scan at the till, separated by rules."""
    offers = delivery.offers[:MAX_RECEIPT_OFFERS]
    lines: list[str] = []
    for offer in offers:
        lines.append("-" * width)
        lines += textwrap.wrap(offer.title, width) or [offer.code[:width]]
        lines += textwrap.wrap(offer.description, width)
        lines.append(f"CODE: {offer.code}"[:width])
    if lines:
        lines.append("-" * width)
    return {
        "receipt_lines": lines,
        "offers": [offer_json(o) for o in offers],
        "customer": dict(delivery.customer),
    }
