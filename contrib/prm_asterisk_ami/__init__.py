"""Asterisk on the call-center touch point, through the Asterisk Manager Interface (AMI).

The hub logs in to AMI as a client and records the switch's call events as CTI events
(:mod:`prm_asterisk_ami.mapping`), so a queue ringing an agent pops the caller's view on that
agent's desktop with no CTI middleware in between. Configure it in the hub's TOML:

.. code-block:: toml

    [touchpoints.callcenter.ami]
    host = "pbx.example.com"
    port = 5038
    username = "prm"
    secret = "env:AMI_SECRET"
    agent_field = "MemberName"   # or "Interface": which queue-member header is the agent id

Without that table the plugin registers nothing. With it, the ``asterisk-ami`` adapter's
service (an aiohttp ``cleanup_ctx`` run once the hub has started) keeps the client running as
long as the server; it reconnects with backoff (:mod:`prm_asterisk_ami.client`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from prm_core.plugin import HUB, Adapter, Config, ConfigError, Hub, hookimpl

from .client import AmiClient, AmiSettings
from .mapping import to_cti

__all__ = ["AmiClient", "AmiSettings", "ami_client", "prm_adapters", "to_cti"]

PLUGIN_NAME = "prm_asterisk_ami.client"


def ami_client(hub: Hub) -> AmiClient | None:
    """The hub's running AMI client, if AMI is configured."""
    holder = hub.pm.get_plugin(PLUGIN_NAME)
    return getattr(holder, "client", None)


class _Holder:
    """Keeps the client findable on the hub's plugin manager while it runs (no hooks)."""

    def __init__(self, client: AmiClient) -> None:
        self.client = client


def ami_service(settings: AmiSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The adapter's service (an aiohttp ``cleanup_ctx``): the client task, for as long as the server."""

    async def service(app: web.Application) -> AsyncIterator[None]:
        hub = app[HUB]
        client = AmiClient(hub, settings)
        holder = _Holder(client)
        hub.pm.register(holder, name=PLUGIN_NAME)
        task = asyncio.create_task(client.run(), name="prm-asterisk-ami")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            hub.pm.unregister(holder)

    return service


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    table: Any = config.section("touchpoints", "callcenter", "ami")
    if not table:
        return []
    try:
        settings = AmiSettings.from_config(table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return [
        Adapter(
            name="asterisk-ami",
            touchpoint="callcenter",
            services=(ami_service(settings),),
            description="Asterisk Manager Interface client: queue calls as CTI events",
        )
    ]
