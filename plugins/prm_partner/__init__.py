"""Partner services: field-service firms, suppliers, notification services the hub asks for
work on a customer's behalf.

Partners come from ``[partners.<name>]`` (``role``, ``protocol`` tmf646|tmf687|cloudevents,
``url``, ``secret`` ``whsec_...``, ``timeout_ms``, ``register_listener``; for field-service
firms ``regions``, ``skills``, ``tiers``, ``price``) and are registered with ``prm_partners``.
The plugin plans the service-request playbook (:mod:`prm_partner.playbook`), choosing among
field-service firms and falling over to the next (:mod:`prm_partner.failover`), carries out
each request with one signed call (:mod:`prm_partner.client`; the core's outbox retries
and keeps it), registers its listener with TM Forum partners at their ``/hub``
(:mod:`prm_partner.listeners`), and receives partners' notifications at
``POST /v1/partners/{partner}/listener/{eventName}`` and ``POST /v1/partners/{partner}/callbacks``
(:mod:`prm_partner.callbacks`), and streams a dialogue's partner outcomes to an open session
at ``GET /v1/touchpoints/{tp}/dialogues/{dialogue}/fulfillments`` (:mod:`prm_partner.push`),
all mounted on the ``partners`` touch point (channel ``partner``, registered only when a
partner is configured). See docs/partners.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator, Sequence

from prm_core.plugin import (
    Adapter,
    Config,
    Fulfillment,
    FulfillmentRequest,
    FulfillmentResult,
    Hub,
    Partner,
    TouchPoint,
    ValueRequest,
    hookimpl,
)

from .callbacks import callback_route, listener_route
from .client import PartnerClient
from .failover import FAILOVER, fulfill_with_failover
from .listeners import registration_service
from .playbook import plan_service_request
from .push import sessions, stream_route
from .settings import PartnerSettings, partner_settings

__all__ = ["PartnerDirectory", "directory"]


class PartnerDirectory:
    """The configured partners and their clients (one circuit breaker each).

    Hooks that receive no config (``prm_fulfill``, ``prm_plan_fulfillment``) read it here;
    it is filled by ``prm_partners`` when a hub starts, so the last hub started in a
    process decides (one hub per process is the deployment; tests start them in turn).
    """

    def __init__(self) -> None:
        self.config = Config()
        self.settings: dict[str, PartnerSettings] = {}
        self.clients: dict[str, PartnerClient] = {}
        self.retired: list[PartnerClient] = []  # replaced by a new configuration: closed with the rest

    def configure(self, config: Config) -> None:
        self.config = config
        self.settings = partner_settings(config)
        breaker = config.section("partner_breaker")
        clients = {}
        for name, s in self.settings.items():
            current = self.clients.get(name)
            # a partner reconfigured identically keeps its breaker (and what it learnt)
            clients[name] = (
                current
                if current is not None and current.settings == s
                else PartnerClient(
                    s, fail_max=int(breaker.get("fail_max", 5)), reset_s=float(breaker.get("reset_s", 30))
                )
            )
        self.retired += [c for name, c in self.clients.items() if clients.get(name) is not c]
        self.clients = clients

    async def close(self) -> None:
        """Close every partner client's connections (those of replaced clients too)."""
        retired, self.retired = self.retired, []
        loop = asyncio.get_running_loop()
        # a replaced client of an earlier hub's event loop was closed when that hub stopped
        for client in [*(c for c in retired if c.loop is loop), *self.clients.values()]:
            await client.close()


directory = PartnerDirectory()


@hookimpl
def prm_partners(config: Config) -> Iterator[Partner]:
    directory.configure(config)
    for s in directory.settings.values():
        yield Partner(name=s.name, role=s.role, description=f"{s.protocol} at {s.url}")


@hookimpl
def prm_touchpoints(config: Config) -> Iterator[TouchPoint]:
    # only a hub with partners listens for their callbacks
    if not partner_settings(config):
        return
    yield TouchPoint(
        name="partners",
        channel="partner",
        budget_ms=int(config.touchpoint("partners").get("budget_ms", 2000)),
        routes=(
            callback_route(lambda: directory.settings),
            listener_route(lambda: directory.settings),
            stream_route(),
        ),
        description="partners' signed callbacks about the work the hub asked of them",
    )


@hookimpl
def prm_adapters(config: Config) -> Iterator[Adapter]:
    # a hub serving HTTP registers its listener with the TM Forum partners that have /hub
    if not partner_settings(config):
        return
    yield Adapter(
        name="partner-listeners",
        touchpoint="partners",
        services=(registration_service(lambda: directory.settings, config.public_url),),
        description="registers the hub's listener at TM Forum partners' /hub while the hub runs",
    )


@hookimpl
def prm_plan_fulfillment(request: ValueRequest) -> list[FulfillmentRequest]:
    return plan_service_request(request, directory.settings.values(), directory.config)


@hookimpl
def prm_fulfill(request: FulfillmentRequest) -> Awaitable[FulfillmentResult] | None:
    client = directory.clients.get(request.partner)
    if client is None:
        return None
    if FAILOVER in request.payload:  # several field-service firms: the next takes what one cannot
        return fulfill_with_failover(request, directory.clients)
    return client.fulfill(request)


@hookimpl
def prm_fulfillment_updated(fulfillment: Fulfillment) -> None:
    sessions.push(fulfillment)


@hookimpl
def prm_customer_erased(customer_id: str, merged_ids: Sequence[str]) -> None:
    sessions.forget([customer_id, *merged_ids])  # updates waiting for an open stream


@hookimpl
def prm_hub_stopping(hub: Hub) -> Awaitable[None]:
    return directory.close()
