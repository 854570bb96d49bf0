"""The plugin API (prm_core.plugin): what plugins import, the import contracts that keep them
to it, and the Hub methods that replace reading the core's tables."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prm_email.inbound import record_bounce
from prm_sms.records import set_sms_suppression

import prm_core.plugin
from prm_core.model import Event, Identity
from prm_core.plugin import InvalidInput
from prm_core.privacy.erasure import erase_customer

ROOT = Path(__file__).parent.parent
AT = datetime(2026, 11, 23, 9, tzinfo=UTC)


def test_every_name_of_the_plugin_api_is_there():
    missing = [name for name in prm_core.plugin.__all__ if not hasattr(prm_core.plugin, name)]
    assert not missing
    assert prm_core.plugin.Hub.recorded.__doc__ and prm_core.plugin.Hub.find_event_id.__doc__
    assert prm_core.plugin.Hub.latest_sent_message.__doc__


def _lint_imports(*args: str, cwd: Path = ROOT, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    pytest.importorskip("importlinter")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_plugins_keep_the_import_contracts():
    run = _lint_imports()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout


def test_a_plugin_reaching_into_the_core_or_contrib_breaks_the_contracts(tmp_path):
    """The project's own contracts, with one more plugin that imports the server's state and
    a contrib adapter, and one that keeps to prm_core.plugin."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for name, body in {
        "prm_rogue": "from prm_core.server.state import HUB\nimport prm_segment\n",
        "prm_polite": "from prm_core.plugin import HUB\n",
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body)
        settings["root_packages"].append(name)
        for contract in settings["contracts"]:
            contract["source_modules"].append(name)

    def toml(value: object) -> str:
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, bool):
            return "true" if value else "false"
        return "[" + ", ".join(toml(v) for v in value) + "]"  # type: ignore[attr-defined]

    lines = ["[tool.importlinter]", f"root_packages = {toml(settings['root_packages'])}"]
    for contract in settings["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        lines += [f"{key} = {toml(value)}" for key, value in contract.items()]
    config = tmp_path / "contracts.toml"
    config.write_text("\n".join(lines) + "\n")

    run = _lint_imports("--config", str(config), pythonpath=str(tmp_path))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "0 kept, 2 broken" in run.stdout
    assert "prm_rogue -> prm_core.server.state" in run.stdout
    assert "prm_rogue -> prm_segment" in run.stdout
    assert "prm_polite" not in run.stdout.split("Broken contracts")[1]


def _event(touchpoint: str, event_id: str, type: str = "visit", **kw: object) -> Event:
    return Event(id=event_id, type=type, occurred_at=AT, touchpoint=touchpoint, **kw)  # type: ignore[arg-type]


async def test_a_touch_point_reads_back_what_it_recorded(hub):
    ann = (Identity("email", "ann@example.com"),)
    (first,) = await hub.record([_event("web", "p/1", identities=ann, data={"n": 1})])
    found = await hub.recorded("web", ["p/1", "p/2", "p/1"])
    assert list(found) == ["p/1"]
    got = found["p/1"]
    assert (got.customer_id, got.dialogue_id, got.duplicate) == (first.customer_id, first.dialogue_id, False)
    assert got.event.identities == ann and got.event.data == {"n": 1} and got.event.occurred_at == AT
    assert await hub.recorded("pos", ["p/1"]) == {} and await hub.recorded("web", []) == {}


async def test_an_event_id_is_found_by_its_ends_matched_literally(hub):
    await hub.record([_event("web", "s_1/w%1/2026-11-23/7", "sale"), _event("web", "sx1/w1/2026-11-22/7", "sale")])
    assert await hub.find_event_id("web", type="sale", prefix="s_1/w%1/", suffix="/7") == "s_1/w%1/2026-11-23/7"
    # _ and % are characters, not LIKE's wildcards
    assert await hub.find_event_id("web", type="sale", prefix="s_1/w_1/", suffix="/7") is None
    assert await hub.find_event_id("web", type="sale", prefix="sx1/", suffix="/7") == "sx1/w1/2026-11-22/7"
    assert await hub.find_event_id("web", type="visit", prefix="sx1/") is None
    assert await hub.find_event_id("pos", type="sale", prefix="sx1/") is None


async def test_shared_identities_and_processed_deliveries(hub):
    home, own = Identity("phone", "+14155550100"), Identity("phone", "+14155550111")
    await hub.set_shared("phone:+14155550100", True)
    assert await hub.shared_identities([home, own]) == [home]
    assert await hub.shared_identities([]) == []
    assert not await hub.delivery_processed("shopify", "d-1")
    await hub.mark_delivery_processed("shopify", "d-1")
    await hub.mark_delivery_processed("shopify", "d-1")  # again: idempotent
    assert await hub.delivery_processed("shopify", "d-1")
    assert not await hub.delivery_processed("square", "d-1")


async def test_a_dialogues_partner_work_is_none_for_another_touch_point(hub):
    (recorded,) = await hub.record([_event("web", "v1", identities=(Identity("email", "ann@example.com"),))])
    assert await hub.dialogue_fulfillments("web", recorded.dialogue_id) == []
    assert await hub.dialogue_fulfillments("pos", recorded.dialogue_id) is None
    assert await hub.dialogue_fulfillments("web", "dlg_unknown") is None


async def _customer_updates(hub) -> list[dict[str, object]]:
    page = await hub.feed.read(None, 1000, {"customer.updated"})
    return [dict(c.data) for c in page.changes]


async def test_suppress_adds_and_removes_a_channel_beside_its_reasons(hub):
    (ann,) = await hub.record([_event("web", "s1", identities=(Identity("email", "ann@example.com"),))])
    cid = ann.customer_id
    assert await hub.suppress(cid, "email", traits={"email_undeliverable": {"at": "2026-11-23T09:00:00Z"}})
    assert await hub.suppress("email:ann@example.com", "sms", traits={"sms_opted_out": "2026-11-23T09:01:00Z"})
    traits = (await hub.view(cid)).customer.traits
    assert traits["suppressed"] == ["email", "sms"] and traits["sms_opted_out"] == "2026-11-23T09:01:00Z"
    assert (await _customer_updates(hub))[-1] == {"traits": dict(traits)}  # as a trait update says it

    assert await hub.suppress(cid, "sms", suppress=False, traits={"sms_opted_out": None})
    traits = (await hub.view(cid)).customer.traits
    assert traits["suppressed"] == ["email"] and "sms_opted_out" not in traits
    assert await hub.suppress(cid, "email", suppress=False)
    assert "suppressed" not in (await hub.view(cid)).customer.traits  # an empty list goes

    before = len(await _customer_updates(hub))
    assert await hub.suppress(cid, "sms", suppress=False)  # nothing to take out: nothing written
    assert len(await _customer_updates(hub)) == before


async def test_suppress_leaves_suppressed_true_alone(hub):
    group = await hub.create_customer("organization", {"suppressed": True})
    assert await hub.suppress(group.id, "email", traits={"email_undeliverable": "bounced"})
    assert await hub.suppress(group.id, "sms", suppress=False)
    traits = (await hub.view(group.id)).customer.traits
    assert traits == {"suppressed": True, "email_undeliverable": "bounced"}


async def test_suppress_is_quiet_for_an_erased_or_unknown_customer(hub):

    (ann,) = await hub.record([_event("web", "s1", identities=(Identity("email", "ann@example.com"),))])
    await erase_customer(hub, ann.customer_id)
    before = await _customer_updates(hub)
    assert await hub.suppress(ann.customer_id, "email") is False
    await record_bounce(hub, [ann])  # a bounce recorded just before the erasure: no error
    await set_sms_suppression(hub, ann.customer_id, True, {"sms_opted_out": "2026-11-23T09:00:00Z"})
    assert (await hub.view(ann.customer_id)).customer.traits == {}
    assert await _customer_updates(hub) == before
    assert await hub.suppress("cus_unknown", "email") is False
    assert await hub.suppress("email:nobody@example.com", "email") is False


async def test_suppress_follows_a_merge_and_refuses_a_bad_channel(hub):
    (ann,) = await hub.record([_event("web", "s1", identities=(Identity("email", "ann@example.com"),))])
    (bob,) = await hub.record([_event("web", "s2", identities=(Identity("phone", "+14155550100"),))])
    both = (Identity("email", "ann@example.com"), Identity("phone", "+14155550100"))
    (linked,) = await hub.record([_event("web", "s3", identities=both)])
    gone = bob.customer_id if linked.customer_id == ann.customer_id else ann.customer_id
    assert await hub.suppress(gone, "sms")
    assert (await hub.view(linked.customer_id)).customer.traits["suppressed"] == ["sms"]
    with pytest.raises(InvalidInput, match="channel"):
        await hub.suppress(linked.customer_id, "pigeon")
    with pytest.raises(InvalidInput, match="suppressed"):
        await hub.suppress(linked.customer_id, "sms", traits={"suppressed": True})


async def test_a_bounce_and_a_stop_at_once_both_suppress(hub):
    """The email touch point's bounce and the SMS touch point's STOP for one customer at the
    same moment: each reads and writes ``suppressed`` under the customer's lock, so neither
    channel is lost (a read in one and a write in the other used to drop one)."""

    people = []
    for n in range(12):
        ids = (Identity("email", f"p{n}@example.com"), Identity("phone", f"+141555501{n:02d}"))
        (recorded,) = await hub.record([_event("web", f"race/{n}", identities=ids)])
        people.append(recorded)
    await asyncio.gather(
        *(record_bounce(hub, [p]) for p in people),
        *(set_sms_suppression(hub, p.customer_id, True, {"sms_opted_out": "2026-11-23T09:00:00Z"}) for p in people),
        *(hub.suppress(p.customer_id, "chat") for p in people),
    )
    for p in people:
        traits = (await hub.view(p.customer_id)).customer.traits
        assert sorted(traits["suppressed"]) == ["chat", "email", "sms"], traits
        assert traits["sms_opted_out"] == "2026-11-23T09:00:00Z"


async def test_the_latest_message_sent_to_a_customer_from_a_touch_point(hub):
    ann = (Identity("phone", "+14155550123"),)

    def sent(n: int, touchpoint: str, hours: int, channel: str, type: str = "message.sent") -> Event:
        return Event(
            id=f"m{n}", type=type, occurred_at=AT + timedelta(hours=hours), touchpoint=touchpoint, identities=ann,
            direction="outbound" if type == "message.sent" else "inbound", dialogue=f"act_{n}",
            data={"channel": channel, "message_id": f"act_{n}"},
        )  # fmt: skip

    recorded = await hub.record(
        [
            sent(1, "web", 0, "sms"),
            sent(2, "web", 1, "sms"),
            sent(3, "web", 2, "push"),
            sent(4, "pos", 3, "sms"),
            sent(5, "web", 4, "sms", type="message.received"),  # the customer's, not the hub's
        ]
    )
    by_id = {r.event.id: r for r in recorded}
    latest = await hub.latest_sent_message("phone:(415) 555-0123", touchpoint="web")
    assert latest is not None and latest.event.id == "m3"
    on_sms = await hub.latest_sent_message(recorded[0].customer_id, touchpoint="web", channel="sms")
    assert on_sms is not None and on_sms.event.id == "m2"
    assert (on_sms.event.data["message_id"], on_sms.dialogue_id) == ("act_2", by_id["m2"].dialogue_id)
    assert on_sms.customer_id == recorded[0].customer_id and on_sms.event.type == "message.sent"
    at_pos = await hub.latest_sent_message("phone:+14155550123", touchpoint="pos", channel="sms")
    assert at_pos is not None and at_pos.event.id == "m4"
    assert await hub.latest_sent_message("phone:+14155550123", touchpoint="web", channel="email") is None
    assert await hub.latest_sent_message("phone:+14155550199", touchpoint="web") is None
    assert await hub.latest_sent_message("cus_unknown", touchpoint="web") is None
