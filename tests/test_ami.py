"""The Asterisk AMI adapter against a fake AMI server replaying captured AMI text over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from browsing import eventually
from prm_asterisk_ami import PLUGIN_NAME, ami_client, to_cti
from prm_callcenter import screen_pops

from prm_core.clock import utcnow
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.server.app import create_app
from prm_core.server.state import HUB

SECRET = "s3cret-ami"
CALL = "1763888400.1"  # the caller's channel Uniqueid, the Linkedid of every leg


def ami(text: str) -> bytes:
    """One AMI message as Asterisk writes it: CRLF line ends, a blank line after."""
    lines = [line.strip() for line in text.strip().splitlines()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# captured from an Asterisk 18 queue call (numbers and names changed); AccountCode is empty as sent
NEWCHANNEL = ami(f"""
    Event: Newchannel
    Privilege: call,all
    Timestamp: 1763888400.104312
    Channel: PJSIP/trunk-00000001
    ChannelState: 4
    ChannelStateDesc: Ring
    CallerIDNum: 4155550100
    CallerIDName: <unknown>
    ConnectedLineNum: <unknown>
    ConnectedLineName: <unknown>
    Language: en
    AccountCode:
    Context: from-trunk
    Exten: 18005550199
    Priority: 1
    Uniqueid: {CALL}
    Linkedid: {CALL}
""")
VARSET = ami(f"""
    Event: VarSet
    Privilege: dialplan,all
    Channel: PJSIP/trunk-00000001
    Variable: QUEUENAME
    Value: support
    Uniqueid: {CALL}
    Linkedid: {CALL}
""")
AGENT_LEG = ami(f"""
    Event: Newchannel
    Privilege: call,all
    Timestamp: 1763888412.220190
    Channel: PJSIP/alice-00000002
    ChannelState: 0
    ChannelStateDesc: Down
    CallerIDNum: 1001
    CallerIDName: Alice
    Context: agents
    Exten: s
    Priority: 1
    Uniqueid: 1763888412.2
    Linkedid: {CALL}
""")
AGENT_CALLED = ami(f"""
    Event: AgentCalled
    Privilege: agent,all
    Timestamp: 1763888412.221007
    Channel: PJSIP/trunk-00000001
    ChannelState: 6
    ChannelStateDesc: Up
    CallerIDNum: 4155550100
    CallerIDName: <unknown>
    Context: from-trunk
    Exten: 18005550199
    Priority: 4
    Uniqueid: {CALL}
    Linkedid: {CALL}
    DestChannel: PJSIP/alice-00000002
    DestChannelState: 0
    DestChannelStateDesc: Down
    DestCallerIDNum: 1001
    DestCallerIDName: Alice
    DestContext: agents
    DestExten: s
    DestPriority: 1
    DestUniqueid: 1763888412.2
    DestLinkedid: {CALL}
    Queue: support
    MemberName: alice
    Interface: PJSIP/alice
""")
AGENT_CONNECT = ami(f"""
    Event: AgentConnect
    Privilege: agent,all
    Timestamp: 1763888415.009881
    Channel: PJSIP/trunk-00000001
    ChannelState: 6
    ChannelStateDesc: Up
    CallerIDNum: 4155550100
    Uniqueid: {CALL}
    Linkedid: {CALL}
    DestChannel: PJSIP/alice-00000002
    DestUniqueid: 1763888412.2
    DestLinkedid: {CALL}
    Queue: support
    MemberName: alice
    Interface: PJSIP/alice
    HoldTime: 12
    RingTime: 3
""")
AGENT_HANGUP = ami(f"""
    Event: Hangup
    Privilege: call,all
    Timestamp: 1763888620.550201
    Channel: PJSIP/alice-00000002
    Uniqueid: 1763888412.2
    Linkedid: {CALL}
    Cause: 16
    Cause-txt: Normal Clearing
""")
HANGUP = ami(f"""
    Event: Hangup
    Privilege: call,all
    Timestamp: 1763888620.551874
    Channel: PJSIP/trunk-00000001
    CallerIDNum: 4155550100
    Uniqueid: {CALL}
    Linkedid: {CALL}
    Cause: 16
    Cause-txt: Normal Clearing
""")
DROP = b""  # in a script: the server closes the connection there, mid-call


class FakeAmi:
    """A TCP server speaking AMI: a banner, the login exchange, then one script per connection."""

    def __init__(self, scripts: list[list[bytes]], refuse_first_login: bool = False) -> None:
        self.scripts = scripts
        self.refuse_first_login = refuse_first_login
        self.logins: list[dict[str, str]] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.received = b""  # what clients sent after logging in

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            writer.write(b"Asterisk Call Manager/5.0.3\r\n")
            raw = await reader.readuntil(b"\r\n\r\n")
            action = dict(line.split(": ", 1) for line in raw.decode().strip().split("\r\n"))
            self.logins.append(action)
            ok = action.get("Secret") == SECRET and not (self.refuse_first_login and len(self.logins) == 1)
            response = "Success" if ok else "Error"
            message = "Authentication accepted" if ok else "Authentication failed"
            writer.write(ami(f"Response: {response}\nActionID: {action['ActionID']}\nMessage: {message}"))
            if not ok:
                await writer.drain()
                writer.close()
                return
            script = self.scripts[min(len(self.logins), len(self.scripts)) - 1] if self.scripts else []
            writer.write(ami("Event: FullyBooted\nPrivilege: system,all\nStatus: Fully Booted"))
            for chunk in script:
                if chunk == DROP:
                    writer.transport.abort()  # as a crashed switch or a cut cable: no goodbye
                    return
                # AMI text arrives in arbitrary TCP pieces: split each message to prove reassembly
                writer.write(chunk[: len(chunk) // 2])
                await writer.drain()
                await asyncio.sleep(0.005)
                writer.write(chunk[len(chunk) // 2 :])
                await writer.drain()
            while chunk := await reader.read(1024):  # stay connected (and silent) until the client leaves
                self.received += chunk
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
def scripts() -> list[list[bytes]]:
    return [
        # the first connection dies after the agent was rung ...
        [NEWCHANNEL, VARSET, AGENT_LEG, AGENT_CALLED, DROP],
        # ... the client reconnects; the switch's next events, one repeated (idempotent)
        [AGENT_CALLED, AGENT_CONNECT, AGENT_HANGUP, HANGUP],
    ]


@pytest.fixture
async def fake_ami(scripts: list[list[bytes]]) -> AsyncIterator[FakeAmi]:
    server = FakeAmi(scripts)
    await server.start()
    yield server
    await server.stop()


@asynccontextmanager
async def served(config: Config) -> AsyncIterator[Hub]:
    """The hub's server, as `prm serve` runs it (adapter services included), on a loopback port."""
    server = TestServer(create_app(config))
    await server.start_server()
    try:
        yield server.app[HUB]
    finally:
        await server.close()


def ami_config(database_url: str, port: int, secret: str = SECRET, **extra: Any) -> Config:
    table = {"host": "127.0.0.1", "port": port, "username": "prm", "secret": secret,
             "min_backoff_s": 0.05, "max_backoff_s": 0.2, **extra}  # fmt: skip
    return Config(database_url=database_url, raw={"touchpoints": {"callcenter": {"ami": table}}})


async def call_view(hub: Hub) -> Any:
    view = await hub.view("phone:+14155550100", limit=50)
    return view


async def test_a_queue_call_across_a_dropped_connection_is_one_call_recorded_once(database_url, fake_ami):
    async with served(ami_config(database_url, fake_ami.port)) as hub:
        pops = screen_pops(hub)
        assert pops is not None
        alice = pops.connect("alice", None)
        client = ami_client(hub)
        assert client is not None

        async def ended() -> bool:
            return client.recorded >= 5  # started, offered, offered again (duplicate), answered, ended

        await eventually(ended, "the call's AMI events to be recorded")
        view = await call_view(hub)
        assert client.connections == 2 and client.logins == 2
        assert fake_ami.logins[0]["Username"] == "prm" and fake_ami.logins[0]["Events"] == "call,agent"

        (dialogue,) = view.dialogues
        assert (dialogue.touchpoint, dialogue.ref, dialogue.status) == ("callcenter", CALL, "closed")
        types = [e["type"] for e in reversed(view.timeline)]
        assert types == ["call.started", "call.offered", "call.answered", "call.ended"]
        started, offered, answered, ended_ = reversed(view.timeline)
        assert started["data"]["dnis"] == "18005550199"
        assert (offered["data"]["agent_id"], offered["data"]["queue"]) == ("alice", "support")
        assert answered["data"]["hold_s"] == "12"
        assert ended_["data"]["cause_text"] == "Normal Clearing"
        assert started["occurred_at"] == "2025-11-23T09:00:00.104312Z"  # AMI's Timestamp, not arrival

        # the ringing agent got the caller's screen pop
        async def popped() -> bool:
            return bool(alice.queue)

        await eventually(popped, "alice's screen pop")
        assert f'"call_id":"{CALL}"' in alice.queue[0]


@pytest.mark.parametrize("scripts", [[[NEWCHANNEL]]])
async def test_a_refused_login_is_retried_with_backoff(database_url, scripts):
    server = FakeAmi(scripts, refuse_first_login=True)
    await server.start()
    try:
        async with served(ami_config(database_url, server.port)) as hub:
            client = ami_client(hub)
            assert client is not None

            async def recorded() -> bool:
                return client.recorded == 1

            await eventually(recorded, "the login to be retried and the call recorded")
            assert (len(server.logins), client.logins) == (2, 1)
    finally:
        await server.stop()


@pytest.mark.parametrize("scripts", [[[NEWCHANNEL]]])
async def test_a_silent_line_is_pinged_then_given_up_and_reconnected(database_url, fake_ami):
    async with served(ami_config(database_url, fake_ami.port, ping_s=0.2)) as hub:
        client = ami_client(hub)
        assert client is not None

        async def reconnected() -> bool:
            return client.logins >= 2 and client.recorded >= 2

        await eventually(reconnected, "a reconnect after the line went silent")
        assert b"Action: Ping\r\n" in fake_ami.received
        # the call's start came once per connection: recorded once
        view = await call_view(hub)
        assert [e["type"] for e in view.timeline] == ["call.started"]
        (recorded,) = await hub.record([to_cti_newchannel()])
        assert recorded.duplicate


def to_cti_newchannel() -> Any:
    from panoramisk.message import Message

    return to_cti(Message.from_line(NEWCHANNEL.decode().strip()), received_at=utcnow())


async def test_an_unreachable_switch_never_stops_the_hub(database_url, unused_tcp_port):
    async with served(ami_config(database_url, unused_tcp_port)) as hub:
        client = ami_client(hub)
        assert client is not None
        await asyncio.sleep(0.3)
        (recorded,) = await hub.record(
            hub.parse_events({"id": "x", "type": "page", "occurred_at": "2026-11-23T09:00:00Z"}, "web")
        )
        assert not recorded.duplicate  # ingest goes on while the client retries
        assert client.logins == 0


async def test_bad_settings_stop_the_start_naming_the_table(database_url):
    config = ami_config(database_url, 5038, colour="blue")
    with pytest.raises(ConfigError, match=r"\[touchpoints.callcenter.ami\] has unknown keys: colour"):
        async with served(config):
            pass


async def test_the_client_runs_with_a_hub_used_as_a_library_and_stops_on_exit(database_url, fake_ami):
    async with Hub.open(ami_config(database_url, fake_ami.port), autoload=True) as hub:
        client = ami_client(hub)
        assert client is not None and hub.pm.get_plugin(PLUGIN_NAME) is not None

        async def ended() -> bool:
            return client.recorded >= 5  # as served: started, offered twice (one duplicate), answered, ended

        await eventually(ended, "the call's AMI events to be recorded through a library hub")
        assert client.logins == 2
        task = hub.pm.get_plugin(PLUGIN_NAME).task
        view = await call_view(hub)
        types = [e["type"] for e in reversed(view.timeline)]
        assert types == ["call.started", "call.offered", "call.answered", "call.ended"]
    assert hub.pm.get_plugin(PLUGIN_NAME) is None and ami_client(hub) is None
    assert task.done()

    async def hung_up() -> bool:  # the client left the switch: the fake server saw its socket close
        return all(writer.is_closing() for writer in fake_ami.writers)

    await eventually(hung_up, "the client's connection to close")


async def test_without_the_table_a_hub_starts_no_client(database_url):
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        assert ami_client(hub) is None and hub.pm.get_plugin(PLUGIN_NAME) is None


async def test_bad_settings_stop_a_library_hubs_start_naming_the_key_and_the_plugin(database_url):
    config = ami_config(database_url, 5038, colour="blue")
    with pytest.raises(ConfigError, match=r"\[touchpoints.callcenter.ami\] has unknown keys: colour") as caught:
        async with Hub.open(config, autoload=True):
            pytest.fail("the hub started")
    assert "raised by plugin 'asterisk_ami' in prm_hub_started" in caught.value.__notes__


def test_only_the_calls_first_channel_starts_and_ends_it():
    from panoramisk.message import Message

    now = utcnow()

    def mapped(raw: bytes) -> Any:
        return to_cti(Message.from_line(raw.decode().strip()), received_at=now)

    assert mapped(AGENT_LEG) is None
    assert mapped(AGENT_HANGUP) is None
    assert mapped(VARSET) is None
    offered = mapped(AGENT_CALLED)
    assert (offered.type, offered.dialogue, offered.data["call_id"]) == ("call.offered", None, CALL)
    interface = to_cti(Message.from_line(AGENT_CALLED.decode().strip()), received_at=now, agent_field="Interface")
    assert interface.data["agent_id"] == "PJSIP/alice"
    blind = ami(f"""
        Event: BlindTransfer
        Privilege: call,all
        Result: Success
        TransfererChannel: PJSIP/alice-00000002
        TransfererUniqueid: 1763888412.2
        TransfererLinkedid: {CALL}
        Extension: 2002
        Context: agents
    """)
    transferred = mapped(blind)
    assert (transferred.type, transferred.data["call_id"], transferred.data["to_extension"]) == (
        "call.transferred",
        CALL,
        "2002",
    )
