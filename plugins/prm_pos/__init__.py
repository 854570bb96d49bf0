"""The store's point of sale: each transaction a dialogue, answered with receipt offers.

Registers the ``pos`` touch point; its budget is ``[touchpoints.pos] budget_ms``
(default 300 ms). ``POST /v1/touchpoints/pos/transactions`` takes the canonical
transaction (ARTS POSLog names, see :mod:`prm_pos.transaction`); the answer's delivery is
rendered as receipt lines (:mod:`prm_pos.receipt`). Also registers the ``household``
identity namespace (:mod:`prm_pos.household`) and the ARTS POSLog importer for
``prm import --touchpoint pos FILE.xml`` (:mod:`prm_pos.poslog`). See docs/pos.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from prm_core.plugin import Config, Delivery, IdentityNamespace, Importer, TouchPoint, hookimpl

from .household import namespace
from .poslog import importer, poslog_zone
from .receipt import render_receipt
from .routes import post_transaction

__all__ = ["prm_identity_namespaces", "prm_importers", "prm_render_delivery", "prm_touchpoints"]


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint("pos")
    poslog_zone(settings)  # a bad time zone stops the hub now, not the first import
    return [
        TouchPoint(
            name="pos",
            channel="store",
            budget_ms=int(settings.get("budget_ms", 300)),
            description=__doc__.split("\n", 1)[0],
            routes=[web.post("/v1/touchpoints/pos/transactions", post_transaction)],
        )
    ]


@hookimpl
def prm_identity_namespaces(config: Config) -> list[IdentityNamespace]:
    return [namespace()]


@hookimpl
def prm_importers(config: Config) -> list[Importer]:
    return [importer()]


@hookimpl
def prm_render_delivery(delivery: Delivery, touchpoint: TouchPoint) -> Mapping[str, Any] | None:
    return render_receipt(delivery) if touchpoint.name == "pos" else None
