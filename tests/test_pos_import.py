"""``prm import --touchpoint pos FILE.xml``: ARTS POSLog, streamed, idempotent and resumable;
and the importer hook that lets any touch point add a file format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from prm_core import hookimpl
from prm_core.cli import main
from prm_core.config import Config
from prm_core.errors import ConfigError, InvalidInput
from prm_core.formats import ImportContext, Importer
from prm_core.hub import Hub
from prm_core.importer import import_events
from prm_core.model import Event, Identity, TouchPoint
from prm_core.store.tables import events, utcnow

SAMPLE = Path(__file__).parent / "data" / "poslog_store042.xml"


def run_import(database_url: str, file: Path, *extra: str):
    return CliRunner().invoke(main, ["import", str(file), "--touchpoint", "pos", "--database", database_url, *extra])


async def views(database_url: str, *refs: str) -> list[dict]:
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        return [(await hub.view(ref, limit=50)).to_json() for ref in refs]


async def stored(database_url: str) -> dict[str, tuple[str, str]]:
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        rows = await hub.store.read(
            lambda conn: list(conn.execute(sa.select(events.c.event_id, events.c.type, events.c.customer_id)))
        )
    return {r.event_id: (r.type, r.customer_id) for r in rows}


def test_a_day_of_poslog_is_imported_once(database_url):
    first = run_import(database_url, SAMPLE)
    assert first.exit_code == 0, first.output
    assert "5 imported, 0 already there, 0 invalid" in first.output
    again = run_import(database_url, SAMPLE)
    assert "0 imported" in again.output and "5 lines skipped" in again.output
    restart = run_import(database_url, SAMPLE, "--restart")
    assert "0 imported, 5 already there" in restart.output

    log = asyncio.run(stored(database_url))
    assert sorted(log) == [
        "pos/S042/1/2026-11-20/5001",
        "pos/S042/1/2026-11-20/5002",
        "pos/S042/1/2026-11-20/5002/void",
        "pos/S042/1/2026-11-20/5003",
        "pos/S042/2/2026-11-20/7001",
    ]  # the sign-on, the cancelled and the training transactions are not sales
    ann, bob = asyncio.run(views(database_url, "loyalty_card:LC-7001", "loyalty_card:LC-7002"))
    m = ann["metrics"]
    assert m["order_count"] == 1 and m["return_count"] == 1
    assert m["revenue_by_currency"] == {"EUR": "507.95"}  # 516.90 net, less the detergent returned
    assert m["categories"] == {"detergents": 1, "washers": 1}
    assert m["last_purchase_at"] == "2026-11-20T10:14:31Z"  # a local time without offset, read as UTC
    (sale,) = [t for t in ann["timeline"] if t["type"] == "pos.sale"]
    assert sale["data"]["tenders"] == [
        {"type": "CreditDebit", "amount": "600.00", "change": "0"},
        {"type": "Cash", "amount": "50.00", "change": "29.72"},
    ]
    assert sale["data"]["line_items"][0] == {
        "item_id": "WM-300",
        "description": "Washer WM-300 8 kg",
        "category": "washers",
        "quantity": "1",
        "unit_price": "549.00",
        "extended_amount": "499.00",
        "discount": "50.00",
    }
    assert bob["metrics"]["categories"] == {"dryers": 1}  # the voided washer line is not bought
    assert bob["metrics"]["revenue_by_currency"] == {"EUR": "649.00"}
    # the post-void undoes the anonymous sale, on that sale's customer
    _, anonymous = log["pos/S042/1/2026-11-20/5002"]
    assert log["pos/S042/1/2026-11-20/5002/void"][1] == anonymous
    (nobody,) = asyncio.run(views(database_url, anonymous))
    assert nobody["metrics"]["order_count"] == 0
    assert nobody["metrics"]["revenue_by_currency"] == {"EUR": "0.00"}


def test_a_transaction_that_does_not_add_up_stops_the_import_until_fixed(database_url, tmp_path):
    broken = tmp_path / "day.xml"
    text = SAMPLE.read_text()
    broken.write_text(text.replace("<Amount>678.80</Amount>", "<Amount>678.00</Amount>"))
    first = run_import(database_url, broken)
    assert first.exit_code == 1
    assert "transaction 4 (7001): tenders add up to 778.00" in first.output
    assert "2 imported" in first.output
    broken.write_text(text)
    second = run_import(database_url, broken)
    assert second.exit_code == 0, second.output
    assert "3 imported, 0 already there" in second.output
    assert len(asyncio.run(stored(database_url))) == 5


def test_a_local_time_is_read_in_the_configured_zone(database_url, tmp_path):
    config = tmp_path / "prm.toml"
    config.write_text('[touchpoints.pos]\nposlog_timezone = "Europe/Paris"\n')
    result = run_import(database_url, SAMPLE, "--config", str(config))
    assert result.exit_code == 0, result.output
    (ann,) = asyncio.run(views(database_url, "loyalty_card:LC-7001"))
    assert ann["metrics"]["last_purchase_at"] == "2026-11-20T09:14:31Z"


# ---- the importer hook, for any touch point ----------------------------------------------------


async def read_visits(path: Path, context: ImportContext) -> AsyncIterator[Event | InvalidInput]:
    """A kiosk's visit log: one ``visit_id<TAB>email<TAB>time`` per line."""
    lines = path.read_text().splitlines()  # noqa: ASYNC240  # two lines, in a test
    for number, line in enumerate(lines, start=1):
        visit_id, email, at = line.split("\t")
        if "@" not in email:
            yield InvalidInput(f"line {number}: no email", "email")
            continue
        yield Event(
            id=visit_id,
            type="kiosk.visit",
            occurred_at=datetime.fromisoformat(at),
            touchpoint="kiosk",
            identities=[Identity("email", email)],
            received_at=utcnow(),
        )


class Kiosk:
    __name__ = "kiosk-visits"

    @hookimpl
    def prm_touchpoints(self, config):
        yield TouchPoint(name="kiosk", channel="kiosk", budget_ms=400)

    @hookimpl
    def prm_importers(self, config):
        yield Importer(name="kiosk-visits", touchpoint="kiosk", suffixes=[".TSV"], read=read_visits)


class AnotherTsv:
    __name__ = "another-tsv"

    @hookimpl
    def prm_importers(self, config):
        yield Importer(name="other-visits", touchpoint="kiosk", suffixes=[".tsv"], read=read_visits)


async def test_a_touch_point_registers_a_file_format(database_url, tmp_path):
    file = tmp_path / "visits.tsv"
    file.write_text("v1\tann@example.com\t2026-11-20T10:00:00+00:00\nv2\tnot-an-email\t2026-11-20T10:05:00+00:00\n")
    config = Config(database_url=database_url)
    result = await import_events(config, file, "kiosk", plugins=[Kiosk()], progress=False, skip_invalid=True)
    assert (result.accepted, result.invalid) == (1, 1)
    again = await import_events(config, file, "kiosk", plugins=[Kiosk()], progress=False, restart=True)
    assert (again.accepted, again.duplicates, again.invalid) == (0, 1, 1)
    with pytest.raises(ConfigError, match=r"both read \.tsv files"):
        await import_events(config, file, "kiosk", plugins=[Kiosk(), AnotherTsv()], progress=False)


def test_an_importer_is_validated_on_registration():
    with pytest.raises(ValueError, match="suffixes"):
        Importer(name="bad", touchpoint="pos", suffixes=["xml"], read=read_visits)


def test_a_bad_poslog_time_zone_stops_the_hub_at_start() -> None:
    from prm_core.errors import ConfigError
    from prm_core.plugins import collect_registrations, make_plugin_manager

    config = Config(
        database_url="sqlite:////tmp/unused.db", raw={"touchpoints": {"pos": {"poslog_timezone": "Europe/Nowhere"}}}
    )
    with pytest.raises(ConfigError, match="poslog_timezone must be an IANA time zone"):
        collect_registrations(make_plugin_manager([]), config)
