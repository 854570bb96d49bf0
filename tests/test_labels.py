"""Event types in words (prm_core.labels) and the prm_event_labels hook in a real hub."""

from __future__ import annotations

from typing import Any

import pytest

from prm_core import hookimpl
from prm_core.labels import CORE_LABELS, label, merge_labels, summarize


class Kiosk:
    @hookimpl
    def prm_event_labels(self, config: Any) -> dict[str, str]:
        return {"kiosk.checkin": "checked in at a kiosk", "delivery": "got an answer", "bad": 3}


@pytest.fixture
def hub_plugins() -> list[Any]:
    return [Kiosk()]


async def test_plugins_label_their_event_types_and_may_replace_the_cores(hub):
    labels = hub.event_labels
    assert labels["kiosk.checkin"] == "checked in at a kiosk"
    assert labels["delivery"] == "got an answer"  # the plugin's words over the core's
    assert labels["fulfillment.planned"] == CORE_LABELS["fulfillment.planned"]
    assert labels["ivr.menu"] == "heard the menu"  # first-party plugins label theirs too
    assert "bad" not in labels  # a label must be words


def test_a_summary_is_the_label_and_the_telling_detail():
    labels = merge_labels([None, {"service.request": "reported a problem"}])
    request = {"type": "service.request", "data": {"product_id": "wm-300", "issue": "washer leaks"}}
    assert summarize(request, labels) == "reported a problem: washer leaks (wm-300)"
    assert summarize({"type": "page", "data": {"path": "/x"}}, labels) == "viewed a page"
    assert summarize({"type": "offer.made", "data": {"title": "CarePlus"}}, labels) == "was offered: CarePlus"
    # an unlabelled type still reads as words, never as a wire name with dots
    assert label("kiosk.check_in", labels) == "kiosk check in"
    assert summarize({"type": "x.y", "data": None}, labels) == "x y"
