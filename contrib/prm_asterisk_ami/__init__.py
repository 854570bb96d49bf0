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

Without that table the plugin does nothing. The client runs for as long as the hub
(``prm_hub_running``) and reconnects with backoff (:mod:`prm_asterisk_ami.client`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prm_core import hookimpl
from prm_core.errors import ConfigError
from prm_core.hub import Hub

from .client import AmiClient, AmiSettings
from .mapping import to_cti

__all__ = ["AmiClient", "AmiSettings", "ami_client", "prm_hub_running", "to_cti"]

PLUGIN_NAME = "prm_asterisk_ami.client"


def ami_client(hub: Hub) -> AmiClient | None:
    """The hub's running AMI client, if AMI is configured."""
    holder = hub.pm.get_plugin(PLUGIN_NAME)
    return getattr(holder, "client", None)


class _Holder:
    """Keeps the client findable on the hub's plugin manager while it runs (no hooks)."""

    def __init__(self, client: AmiClient) -> None:
        self.client = client


@asynccontextmanager
async def _running(hub: Hub, settings: AmiSettings) -> AsyncIterator[None]:
    if "callcenter" not in hub.registrations.touchpoints:
        raise ConfigError("[touchpoints.callcenter.ami] needs the callcenter touch point (prm_callcenter)")
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


@hookimpl
def prm_hub_running(hub: Hub) -> object:
    table = hub.config.section("touchpoints", "callcenter", "ami")
    if not table:
        return None
    try:
        settings = AmiSettings.from_config(table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return _running(hub, settings)
