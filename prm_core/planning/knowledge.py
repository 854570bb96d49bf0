"""The registry of knowledge artifacts: what each value provider knows, and who uses it.

Each :class:`~prm_core.model.ValueProvider` says what it is about (the business or the
customer) and describes itself; ``[knowledge.<provider>].touchpoints`` in the config names
the touch-point scenarios that draw on it (every touch point when not said). The built-in
``catalog`` provider answers a request with the catalog entries of the products it concerns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..model import ValueProvider, ValueRequest
from ..plugins import Registrations
from .offers import Catalog, _products

__all__ = ["catalog_provider", "knowledge_registry", "used_at"]


def used_at(provider: ValueProvider, config: Config) -> frozenset[str] | None:
    """The touch points whose requests ``provider`` answers; ``None``: every touch point.

    ``[knowledge.<provider>].touchpoints`` in the config wins over what the provider registered.
    """
    configured = config.section("knowledge", provider.name).get("touchpoints")
    if configured is not None:
        if not isinstance(configured, list) or not all(isinstance(t, str) for t in configured):
            raise ConfigError(f"[knowledge.{provider.name}].touchpoints must be a list of touch point names")
        return frozenset(configured)
    return provider.touchpoints or None


def catalog_provider(catalog: Catalog) -> ValueProvider:
    """The ``catalog`` value provider (about the business) over ``[catalog.items]``."""

    async def provide(request: ValueRequest) -> Mapping[str, Any]:
        looked, bought = _products(request)
        items = {}
        for item_id in [*looked, *bought]:
            item = catalog.get(item_id)
            if item is not None:
                items[item_id] = item.to_json()
                for accessory in item.accessories:
                    items.setdefault(accessory, catalog.items[accessory].to_json())
        return {"items": items}

    return ValueProvider(
        name="catalog",
        about="business",
        provide=provide,
        description="catalog items: category, price, accessories, warranty levels ([catalog.items])",
    )


def knowledge_registry(config: Config, registrations: Registrations) -> list[dict[str, Any]]:
    """Every value provider: name, about, description, plugin, and the touch points using it."""
    all_touchpoints = registrations.touchpoints.names()
    result = []
    for provider in sorted(registrations.value_providers, key=lambda p: p.name):
        used = used_at(provider, config) or all_touchpoints
        result.append(
            {
                "name": provider.name,
                "about": provider.about,
                "description": provider.description,
                "plugin": registrations.value_providers.providers[provider.name],
                "touchpoints": sorted(used),
            }
        )
    return result
