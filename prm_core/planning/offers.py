"""Business knowledge and the built-in offer rules: catalog accessories, warranty, entitlements.

The catalog is configuration (``[catalog.items.<item_id>]``) and is registered as the
``catalog`` value provider (about the business). The built-in offer rules read a request's
event and the customer's view:

- **accessories**: for the product the customer is looking at (``data.product_id`` of the
  request or of a recent event) or bought (``data.line_items[].item_id``), its catalog
  accessories the customer has not bought yet;
- **warranty**: for a product looked at or bought that has ``warranty_levels`` (cheapest
  first), the level that fits: one step up per past claim (``warranty.claim`` or
  ``service.request`` events) and one for a product priced at ``premium_price`` or more;
- **entitlement**: on a ``service.request``, the service level the customer's tier buys
  (:mod:`prm_core.planning.entitlements`).

Every offer then goes through :meth:`OfferSettings.select`: consent (``data.purpose``,
personalization unless said otherwise; an offer a plugin made from the impersonal view, marked
``data.impersonal``, needs no personalization consent), one offer per code, ranked by score, capped per
touch point, and given a stable id so responses can be matched to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from attrs import evolve, field, frozen

from ..consent import DEFAULTS, PURPOSES, allows
from ..errors import ConfigError
from ..model import Offer, ValueRequest
from .entitlements import service_days

__all__ = ["Catalog", "CatalogItem", "OfferSettings", "builtin_offers", "offer_id"]

CLAIM_TYPES = frozenset({"warranty.claim", "service.request"})


@frozen
class CatalogItem:
    item_id: str
    title: str
    category: str = ""
    price: Decimal | None = None
    accessories: tuple[str, ...] = ()
    warranty_levels: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "category": self.category,
            "price": str(self.price) if self.price is not None else None,
            "accessories": list(self.accessories),
            "warranty_levels": list(self.warranty_levels),
        }


@frozen
class Catalog:
    """``[catalog.items.<item_id>]``: category, price, title, accessories, warranty levels."""

    items: Mapping[str, CatalogItem] = field(factory=dict)
    premium_price: Decimal = Decimal(1000)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Catalog:
        items: dict[str, CatalogItem] = {}
        raw_items = section.get("items", {})
        if not isinstance(raw_items, Mapping):
            raise ConfigError("[catalog.items] must be a table of items")
        for item_id, raw in raw_items.items():
            where = f"[catalog.items.{item_id}]"
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{where} must be a table")
            unknown = set(raw) - {"title", "category", "price", "accessories", "warranty_levels"}
            if unknown:
                raise ConfigError(f"{where} has unknown key {sorted(unknown)[0]!r}")
            try:
                price = Decimal(str(raw["price"])) if "price" in raw else None
            except InvalidOperation:
                raise ConfigError(f"{where}.price must be a decimal number") from None
            lists = {}
            for key in ("accessories", "warranty_levels"):
                value = raw.get(key, [])
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{where}.{key} must be a list of strings")
                lists[key] = tuple(value)
            items[item_id] = CatalogItem(
                item_id=item_id,
                title=str(raw.get("title", item_id)),
                category=str(raw.get("category", "")),
                price=price,
                accessories=lists["accessories"],
                warranty_levels=lists["warranty_levels"],
            )
        for item in items.values():
            missing = [a for a in item.accessories if a not in items]
            if missing:
                raise ConfigError(f"[catalog.items.{item.item_id}].accessories names unknown item {missing[0]!r}")
        premium = section.get("premium_price", 1000)
        return cls(items, Decimal(str(premium)))

    def get(self, item_id: Any) -> CatalogItem | None:
        return self.items.get(item_id) if isinstance(item_id, str) else None


@frozen
class OfferSettings:
    """``[offers]``: ``max_per_touchpoint`` (5), ``caps.<touchpoint>``, ``response_window_hours`` (72)."""

    max_per_touchpoint: int = 5
    caps: Mapping[str, int] = field(factory=dict)
    response_window_hours: int = 72
    consent_defaults: Mapping[str, bool] = field(factory=lambda: dict(DEFAULTS))

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], privacy_defaults: Mapping[str, Any] | None = None
    ) -> OfferSettings:
        def count(value: Any, where: str) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                raise ConfigError(f"{where} must be a whole number 0-100, got {value!r}")
            return value

        caps = section.get("caps", {})
        if not isinstance(caps, Mapping):
            raise ConfigError("[offers.caps] must be a table of touch point = number")
        window = section.get("response_window_hours", 72)
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 24 * 365:
            raise ConfigError("[offers].response_window_hours must be a whole number of hours (1-8760)")
        defaults = dict(DEFAULTS)
        for purpose, granted in (privacy_defaults or {}).items():
            if purpose not in DEFAULTS or not isinstance(granted, bool):
                raise ConfigError(f"[privacy.defaults].{purpose}: a purpose of {sorted(DEFAULTS)} = true or false")
            defaults[purpose] = granted
        return cls(
            max_per_touchpoint=count(section.get("max_per_touchpoint", 5), "[offers].max_per_touchpoint"),
            caps={tp: count(n, f"[offers.caps].{tp}") for tp, n in caps.items()},
            response_window_hours=window,
            consent_defaults=defaults,
        )

    def cap(self, touchpoint: str) -> int:
        return self.caps.get(touchpoint, self.max_per_touchpoint)

    def select(self, offers: Iterable[Offer], request: ValueRequest) -> tuple[list[Offer], list[Offer]]:
        """Consent, one per code (best score), ranked, capped, each with a stable ``data.offer_id``.

        Returns the offers to make and the campaign offers held out from this customer (the
        campaign's control group), which are recorded but never shown.
        """
        channel = request.touchpoint.name
        best: dict[str, Offer] = {}
        held_out: list[Offer] = []
        for o in offers:
            purpose = o.data.get("purpose", "personalization")
            if purpose == "personalization" and o.data.get("impersonal"):
                pass  # made without personal data (prm_core.delivery): nothing to consent to
            elif purpose not in PURPOSES or not allows(
                request.view.consents, purpose, channel, defaults=self.consent_defaults
            ):
                continue
            if o.data.get("control"):
                held_out.append(o)
            elif o.code not in best or o.score > best[o.code].score:
                best[o.code] = o
        ranked = sorted(best.values(), key=lambda o: (-o.score, o.code))[: self.cap(channel)]
        turn = request.event.event

        def with_id(o: Offer) -> Offer:
            return evolve(o, data={**o.data, "offer_id": offer_id(turn.touchpoint, turn.id, o.code)})

        return [with_id(o) for o in ranked], [with_id(o) for o in held_out]


def offer_id(touchpoint: str, request_id: str, code: str) -> str:
    """Derived from the request and the code: a replayed request makes the same offers."""
    return "ofr_" + hashlib.sha256(f"{touchpoint}\x1f{request_id}\x1f{code}".encode()).hexdigest()[:32]


def _products(request: ValueRequest) -> tuple[list[str], list[str]]:
    """Items the customer is looking at (this request first) and items bought, from the view's page."""
    looked: list[str] = []
    bought: list[str] = []
    turn = request.event.event
    events: list[Mapping[str, Any]] = [{"data": turn.data}, *request.view.timeline]
    for ev in events:
        data = ev.get("data") or {}
        if not isinstance(data, Mapping):
            continue
        pid = data.get("product_id")
        if isinstance(pid, str) and pid not in looked:
            looked.append(pid)
        for line in data.get("line_items") or ():
            if isinstance(line, Mapping) and isinstance(line.get("item_id"), str) and line["item_id"] not in bought:
                bought.append(line["item_id"])
    return looked, bought


def _claims(timeline: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 for ev in timeline if ev.get("type") in CLAIM_TYPES and ev.get("direction", "inbound") == "inbound")


def builtin_offers(request: ValueRequest, catalog: Catalog, entitlements: Mapping[str, int]) -> list[Offer]:
    """The built-in offer rules (see the module docstring)."""
    offers: list[Offer] = []
    looked, bought = _products(request)
    owned = set(bought)
    for rank, (item_id, why) in enumerate([*((i, "looking") for i in looked), *((i, "bought") for i in bought)]):
        item = catalog.get(item_id)
        if item is None:
            continue
        base = (0.7 if why == "looking" else 0.5) - rank * 0.01
        for accessory_id in item.accessories:
            if accessory_id in owned:
                continue
            accessory = catalog.items[accessory_id]
            offers.append(
                Offer(
                    code=f"accessory:{accessory_id}",
                    title=accessory.title,
                    score=round(base, 3),
                    source="planning.accessories",
                    description=f"goes with {item.title}",
                    data={"item_id": accessory_id, "for_item": item_id, "price": _str(accessory.price)},
                )
            )
        if item.warranty_levels:
            claims = _claims(request.view.timeline)
            premium = item.price is not None and item.price >= catalog.premium_price
            level = item.warranty_levels[min(len(item.warranty_levels) - 1, claims + int(premium))]
            offers.append(
                Offer(
                    code=f"warranty:{item_id}:{level}",
                    title=f"{level.capitalize()} warranty for {item.title}",
                    score=round(base - 0.1, 3),
                    source="planning.warranty",
                    description=f"fits {claims} past claim(s){' and a premium product' if premium else ''}",
                    data={"item_id": item_id, "level": level, "claims": claims},
                )
            )
    if request.event.event.type == "service.request":
        tier = request.view.customer.tier
        days = service_days(tier, entitlements)
        offers.append(
            Offer(
                code=f"entitlement:technician:{days}d",
                title=f"Technician within {days} business day{'s' if days != 1 else ''}",
                score=0.95,
                source="planning.entitlements",
                description=f"service level of the {tier or 'standard'} tier",
                data={"business_days": days, "tier": tier},
            )
        )
    return offers


def _str(value: Decimal | None) -> str | None:
    return str(value) if value is not None else None
