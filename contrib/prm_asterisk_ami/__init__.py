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

Without that table the plugin starts nothing. With it, the client runs as long as the hub,
from ``prm_hub_started`` to ``prm_hub_stopping`` (under ``prm serve`` and in a hub used as a
library alike), registered on the hub's plugin manager where :func:`ami_client` finds it; it
reconnects with backoff (:mod:`prm_asterisk_ami.client`). Bad settings stop the hub's start,
naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prm_core.plugin import ConfigError, Hub, hookimpl

from .client import AmiClient, AmiSettings
from .mapping import to_cti

__all__ = ["AmiClient", "AmiSettings", "ami_client", "prm_hub_started", "prm_hub_stopping", "to_cti"]

PLUGIN_NAME = "prm_asterisk_ami.client"


def ami_client(hub: Hub) -> AmiClient | None:
    """The hub's running AMI client, if AMI is configured."""
    holder = hub.pm.get_plugin(PLUGIN_NAME)
    return holder.client if isinstance(holder, _Holder) else None


class _Holder:
    """Keeps the client and its task findable on the hub's plugin manager while it runs (no hooks)."""

    def __init__(self, client: AmiClient, task: asyncio.Task[None]) -> None:
        self.client = client
        self.task = task


def ami_settings(hub: Hub) -> AmiSettings | None:
    """The hub's ``[touchpoints.callcenter.ami]`` settings, or ``None`` without that table."""
    table: Any = hub.config.section("touchpoints", "callcenter", "ami")
    if not table:
        return None
    try:
        return AmiSettings.from_config(table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


@hookimpl
def prm_hub_started(hub: Hub) -> None:
    """Start the hub's AMI client (if configured) and register it on the hub's plugin manager.
    The hub starts and serves even while the switch is unreachable: the client keeps trying."""
    settings = ami_settings(hub)
    if settings is None:
        return
    client = AmiClient(hub, settings)
    task = asyncio.create_task(client.run(), name="prm-asterisk-ami")
    hub.pm.register(_Holder(client, task), name=PLUGIN_NAME)


@hookimpl
async def prm_hub_stopping(hub: Hub) -> None:
    """Stop the hub's AMI client and unregister it."""
    holder = hub.pm.get_plugin(PLUGIN_NAME)
    if isinstance(holder, _Holder):
        hub.pm.unregister(holder)
        holder.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder.task
