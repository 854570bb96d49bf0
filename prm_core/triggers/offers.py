"""Offers a trigger queued, said at the customer's next contact at any touch point.

They come in through ``prm_propose_offers``, like every other offer: consent for their
purpose on the touch point, ranking and caps (:meth:`prm_core.planning.offers.OfferSettings.select`)
then apply as to any offer. Once one is made (its ``offer.made`` change, source
``trigger:NAME``), the engine marks it done; one never made expires.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from ..model import Offer, ValueRequest
from ..store.tables import utcnow
from .runs import queued_offers

if TYPE_CHECKING:
    from .engine import TriggerEngine

__all__ = ["QueuedOffers"]


class QueuedOffers:
    """The ``prm_propose_offers`` implementation the engine registers while it runs."""

    def __init__(self, engine: TriggerEngine) -> None:
        self.engine = engine

    @hookimpl
    def prm_propose_offers(self, request: ValueRequest) -> Awaitable[list[Offer]] | None:
        if not self.engine.queues_offers:
            return None  # no trigger queues offers: no read on the request's path
        return self._offers(request.view.customer.id)

    async def _offers(self, customer_id: str) -> list[Offer]:
        rows = await self.engine.hub.store.read(functools.partial(queued_offers, customer_id=customer_id, now=utcnow()))
        return [
            Offer(
                code=r.code,
                title=r.title,
                score=r.score,
                source=f"trigger:{r.trigger}",
                description=r.description,
                data={"trigger": r.trigger, "purpose": r.purpose},
            )
            for r in rows
        ]
