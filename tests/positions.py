"""Reading one's own writes in a test, as a client does: an events answer carries the journal
``position`` its events were accepted at, and a read that must see them passes it (``?after=``,
or the ``PRM-After-Position`` header). An answer without a position comes from a hub that
recorded the events before answering, and the read needs nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prm_core.hub import Hub

WAIT_S = 30.0  # a loaded test machine may process slowly; a test waits rather than fails


def after(answer: Mapping[str, Any], sep: str = "?") -> str:
    """``?after=POSITION`` (``&after=`` with ``sep="&"``) for a read that must see the events
    of ``answer``; empty when it has no position."""
    position = answer.get("position")
    return "" if position is None else f"{sep}after={position}"


def after_header(answer: Mapping[str, Any]) -> dict[str, str]:
    """The ``PRM-After-Position`` header for a read that must see the events of ``answer``."""
    position = answer.get("position")
    return {} if position is None else {"PRM-After-Position": str(position)}


async def recorded(hub: Hub, answer: Mapping[str, Any] | int | None) -> None:
    """Wait until ``hub`` has recorded the events of an events answer (or up to a position):
    their hooks have run and every read sees them."""
    position = answer.get("position") if isinstance(answer, Mapping) else answer
    if position is not None:
        assert await hub.processed_after(int(position), WAIT_S), f"position {position} not processed in {WAIT_S} s"


async def settled(hub: Hub) -> None:
    """Wait until ``hub`` has recorded everything it journaled so far: for events sent through
    a route whose answer carries no position (Snowplow's pixel and ``ok``)."""
    if hub.journal is not None:
        await recorded(hub, hub.journal.head)


def counts(answer: Mapping[str, Any]) -> dict[str, Any]:
    """An events answer without its position: what was accepted, and the duplicates."""
    return {"accepted": answer["accepted"], "duplicates": answer["duplicates"]}


async def read_after(client: Any, answer: Mapping[str, Any], ref: str, headers: Mapping[str, str]) -> None:
    """Read customer ``ref`` after the position of an events answer: from then on every read,
    whichever route (segments, the scorecard, campaigns), sees those events."""
    resp = await client.get(f"/v1/customers/{ref}{after(answer)}", headers=headers)
    assert resp.status in (200, 404), await resp.text()
