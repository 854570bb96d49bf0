"""Event types in words, for the pages people read (the agent desktop, the console).

An event's ``type`` is a wire name (``fulfillment.planned``); a person reads "service work
planned". :data:`CORE_LABELS` names the core's own types; each plugin adds or overrides the
names of its own through the ``prm_event_labels`` hook. :func:`summarize` turns one timeline
item into a short line: the label, then the detail that matters (the issue, the product, the
note's text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CORE_LABELS", "label", "merge_labels", "summarize"]

CORE_LABELS: Mapping[str, str] = {
    "page": "viewed a page",
    "product.viewed": "looked at a product",
    "identify": "signed in",
    "delivery": "was answered",
    "offer.made": "was offered",
    "offer.accepted": "accepted an offer",
    "offer.declined": "declined an offer",
    "fulfillment.planned": "service work planned",
    "fulfillment.updated": "service work updated",
    "service.request": "reported a problem",
    "order.completed": "placed an order",
    "consent.given": "gave consent",
    "consent.withdrawn": "withdrew consent",
    "message.sent": "was sent a message",
    "message.received": "replied",
    "message.bounced": "a message to them bounced",
    "survey.answered": "answered a survey",
}

# data fields worth a person's attention, most telling first
_DETAILS = (
    "issue",
    "text",
    "answer",
    "title",
    "product_title",
    "product_id",
    "outcome",
    "menu",
    "digits",
    "queue",
    "reason",
)


def merge_labels(contributed: Iterable[Mapping[str, str] | None]) -> dict[str, str]:
    """The core's labels overlaid with each plugin's (later ones win on the same type);
    anything that is not a non-empty string label is ignored."""
    labels = dict(CORE_LABELS)
    for found in contributed:
        if not isinstance(found, Mapping):
            continue
        labels.update({k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str) and v})
    return labels


def label(event_type: str, labels: Mapping[str, str]) -> str:
    """The words for ``event_type``; an unlabelled ``a.b_c`` reads ``a b c``."""
    return labels.get(event_type) or event_type.replace(".", " ").replace("_", " ")


def summarize(item: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """One timeline item as a line: ``reported a problem: washer leaks (wm-300)``."""
    found = item.get("data")
    data: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    words = label(str(item.get("type", "")), labels)
    details = [str(data[k]) for k in _DETAILS if isinstance(data.get(k), str | int | float) and str(data[k]).strip()]
    if not details:
        return words
    head, rest = details[0], details[1:2]
    return f"{words}: {head}" + (f" ({rest[0]})" if rest else "")
