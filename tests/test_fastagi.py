"""The FastAGI adapter, driven by the aioagi-ik client acting as Asterisk.

aioagi's ``AGIClientSession`` opens the TCP connection and sends the ``agi_*`` headers as
Asterisk does; each command the hub sends arrives parsed, and the test answers it as
Asterisk would (``200 result=...``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioagi.client import AGIClientSession
from aioagi.commands import AGICommand
from aioagi.connector import AGITCPConnector
from aioagi.parser import AGICode, AGIMessage
from prm_fastagi import FASTAGI, quote
from prm_ivr.engine import Appointment, speak_window
from test_ivr_support import FieldService, dialogue_of, ivr_events, known_on_the_web

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.server.state import HUB


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return Config(
        database_url=database_url,
        raw={"touchpoints": {"ivr": {"fastagi": {"port": 0, "tts_app": "Festival"}}}},
    )


@pytest.fixture
def field_service() -> FieldService:
    return FieldService()


@pytest.fixture
def hub_plugins(field_service: FieldService) -> list[Any]:
    return [field_service]


async def asterisk_call(
    port: int, *, callerid: str, uniqueid: str, keys: list[str], hang_up_at_input: int | None = None
) -> list[tuple[str, list[str]]]:
    """Call the hub's FastAGI server as Asterisk would; press ``keys`` at each GET DATA
    (``""`` is a timeout). Returns every command received with its arguments."""
    received: list[tuple[str, list[str]]] = []
    presses = iter(keys)
    inputs = 0
    connector = AGITCPConnector()
    session = AGIClientSession(
        connector=connector,
        connector_owner=False,
        headers={"agi_callerid": callerid, "agi_uniqueid": uniqueid, "agi_channel": "PJSIP/trunk-00000001"},
    )
    try:
        async with session.sip(f"agi://127.0.0.1:{port}/prm") as response:
            async for message in response:
                received.append((message.command.value, list(message.args)))
                if message.command == AGICommand.GET_DATA:
                    inputs += 1
                    if inputs == hang_up_at_input:
                        await response.send(AGIMessage(AGICode.OK, "-1", {}))
                        continue
                    digit = next(presses)
                    reply = AGIMessage(AGICode.OK, digit, {"data": "timeout"} if digit == "" else {})
                    await response.send(reply)
                elif message.command == AGICommand.SET_VARIABLE:
                    await response.send(AGIMessage(AGICode.OK, "1", {}))
                else:
                    await response.send(AGIMessage(AGICode.OK, "0", {}))
    finally:
        await session.close()
        await connector.close()
    return received


def spoken(commands: list[tuple[str, list[str]]]) -> list[str]:
    return [args[1] for cmd, args in commands if cmd == "EXEC" and args[0] == "Festival"]


async def test_a_known_caller_in_national_format_is_greeted_and_transferred_to_priority(hub_client, field_service):
    hub = hub_client.app[HUB]
    customer = await known_on_the_web(hub)
    port = hub_client.app[FASTAGI].port
    # Asterisk hands the caller id as the carrier gave it: national digits
    commands = await asterisk_call(port, callerid="4155550100", uniqueid="1732350000.1", keys=["0"])
    assert commands[0] == ("ANSWER", [])
    window = speak_window(Appointment(field_service.start, field_service.end))
    lines = spoken(commands)
    assert lines[1] == "Welcome back Ann."  # commas are stripped: Festival would take them as options
    assert lines[2] == quote(f"Your technician visit is scheduled {window}.").strip('"')
    assert lines[3].startswith("As a platinum member")
    assert ("GET DATA", ["beep", "5000", "1"]) in commands
    assert commands[-1] == ("SET VARIABLE", ["PRM_QUEUE", "priority"])

    types = [t for _, t, _ in await ivr_events(hub, "1732350000.1")]
    assert types == [
        "ivr.call.started",
        "delivery",
        "ivr.menu",
        "ivr.input",
        "delivery",
        "ivr.menu",
        "ivr.transferred",
        "ivr.ended",
    ]
    dialogue = await dialogue_of(hub, "1732350000.1")
    assert (dialogue.customer_id, dialogue.outcome) == (customer, "transferred")


async def test_an_unknown_caller_navigates_to_a_self_served_end(hub_client):
    hub = hub_client.app[HUB]
    port = hub_client.app[FASTAGI].port
    commands = await asterisk_call(port, callerid="unknown", uniqueid="1732350000.2", keys=["", "3"])
    lines = spoken(commands)
    assert lines[0] == "Thank you for calling customer service."
    assert not any("platinum" in line for line in lines)
    assert "Sorry I did not hear anything." in lines
    # the goodbye is the last thing said; HANGUP ends aioagi's session (it is not yielded)
    assert commands[-1] == ("EXEC", ["Festival", "Thank you for calling. Goodbye."])
    assert not any(cmd == "SET VARIABLE" for cmd, _ in commands)
    dialogue = await dialogue_of(hub, "1732350000.2")
    assert (dialogue.status, dialogue.outcome) == ("closed", "self_served")
    inputs = [d for _, t, d in await ivr_events(hub, "1732350000.2") if t == "ivr.input"]
    assert [(i["mode"], i.get("digits")) for i in inputs] == [("none", None), ("dtmf", "3")]


async def test_a_hang_up_mid_menu_is_abandoned(hub_client):
    hub = hub_client.app[HUB]
    port = hub_client.app[FASTAGI].port
    commands = await asterisk_call(port, callerid="+14155550142", uniqueid="1732350000.3", keys=[], hang_up_at_input=1)
    assert not any(cmd == "SET VARIABLE" for cmd, _ in commands)
    dialogue = await dialogue_of(hub, "1732350000.3")
    assert (dialogue.status, dialogue.outcome) == ("closed", "abandoned")
    ended = [d for _, t, d in await ivr_events(hub, "1732350000.3") if t == "ivr.ended"]
    assert ended == [{"outcome": "abandoned", "node": "main"}]


def test_quote_keeps_agi_arguments_whole():
    assert quote('Say "hi", then\\go\nnow') == '"Say hi then go now"'


def test_a_bad_port_stops_the_hub_at_start(database_url):
    from prm_core.server.app import create_app

    config = Config(database_url=database_url, raw={"touchpoints": {"ivr": {"fastagi": {"port": "4573x"}}}})
    with pytest.raises(ConfigError, match=r"fastagi\]\.port"):
        create_app(config)


async def test_an_asynchronous_hangup_line_and_a_withheld_number(hub_client):
    """With agi-sigHUP, Asterisk writes ``HANGUP`` instead of an answer when the caller hangs up."""
    hub = hub_client.app[HUB]
    port = hub_client.app[FASTAGI].port
    connector = AGITCPConnector()
    session = AGIClientSession(
        connector=connector, connector_owner=False, headers={"agi_callerid": "", "agi_uniqueid": "1732350000.4"}
    )
    try:
        async with session.sip(f"agi://127.0.0.1:{port}/prm") as response:
            async for message in response:
                if message.command == AGICommand.GET_DATA:
                    await response.send_str("HANGUP\n")
                else:
                    await response.send(AGIMessage(AGICode.OK, "0", {}))
    finally:
        await session.close()
        await connector.close()
    for _ in range(100):  # the server records the end after the connection is gone
        dialogue = await dialogue_of(hub, "1732350000.4")
        if dialogue is not None and dialogue.status == "closed":
            break
        await asyncio.sleep(0.05)
    assert (dialogue.status, dialogue.outcome) == ("closed", "abandoned")
    started = [e for e in await ivr_events(hub, "1732350000.4") if e[1] == "ivr.call.started"]
    assert started and started[0][2]["source"] == "asterisk"
