"""``prm demo``: the flagship scenario end to end, narrated, against an in-process hub.

A hub (the built-in plugins, a throw-away SQLite file) and two TM Forum partner simulators
(a field-service firm and a parts supplier, with realistic latencies) run in this process; the
demo talks to them only through the public wire formats: POS transactions, the web API,
signed Twilio webhooks, CTI events, the agent's screen-pop WebSocket, the partners' signed
notifications and raw emails; the hub's triggers write their emails into a maildir in the
demo's directory, where the demo reads them. It plays the flagship scenario (with the
platinum welcome, and the technician's visit followed by its survey, answered by reply),
then a day of mixed traffic for a few hundred customers, narrating each step with its time
against the touch point's budget, and ends with the scorecard. It exits non-zero if any step
misses its budget or fails.

The command reaches ``prm`` through the ``prm.commands`` entry points (see docs/cli.md).
"""

from __future__ import annotations

import asyncio
import sys

import click

from .scenario import run_demo

__all__ = ["demo", "run_demo"]


@click.command()
@click.option("--customers", default=300, show_default=True, help="customers in the day of mixed traffic")
@click.option("--seed", default=7, show_default=True, help="seed of the day's traffic")
@click.option("--keep", is_flag=True, help="keep the demo's database directory and print where it is")
def demo(customers: int, seed: int, keep: bool) -> None:
    """Play the flagship scenario and a day of traffic against an in-process hub; exit 1 on a miss."""
    from prm_core.plugin import configure_logging

    configure_logging("warning")
    ok = asyncio.run(run_demo(customers=customers, seed=seed, keep=keep, echo=click.echo))
    sys.exit(0 if ok else 1)
