"""Personal data is redacted from logs by a processor, whoever logs it."""

from __future__ import annotations

import json

import structlog
from positions import after

from prm_core.logs import configure_logging, redact


def test_redact_masks_emails_phones_and_personal_fields():
    out = redact({"msg": "ann@example.com called from +1 (415) 555-0100", "first_name": "Ann", "n": 3})
    assert out == {"msg": "[redacted] called from [redacted]", "first_name": "[redacted]", "n": 3}


def test_digits_inside_an_identifier_are_not_a_phone_number():
    # key ids and hashes are hex: a long run of digits inside one is part of the identifier
    for identifier in ["1f441228915a7af0", "key 0123456789abcdef", "req-9e8d7c6b5a41234567f"]:
        assert redact(identifier) == identifier
    for phone, shown in [
        ("tel:+14155550100", "tel:[redacted]"),
        ("call (415) 555-0100, then", "call [redacted], then"),
        ("phone=0033612345678", "phone=[redacted]"),
    ]:
        assert redact(phone) == shown


def test_configured_logging_redacts_every_logger(capsys):
    configure_logging("info", json=True, cache=False)
    structlog.get_logger("anything").info(
        "lookup", ref="email:ann@example.com", identities={"phone": "+14155550100"}, path="/v1/x"
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["ref"] == "email:[redacted]"
    assert entry["identities"] == "[redacted]"
    assert entry["path"] == "/v1/x"
    assert "ann@example.com" not in line and "4155550100" not in line


async def test_the_hub_logs_no_personal_data(hub_client, make_key, capsys):
    configure_logging("debug", json=True, cache=False)
    key = await make_key("touchpoint:web")
    body = {
        "id": "e1",
        "type": "identify",
        "occurred_at": "2026-11-23T08:00:00Z",
        "identities": {"email": "zed.secret@example.org", "phone": "+442079460958"},
        "data": {"first_name": "Zebulon"},
    }
    sent = await hub_client.post("/v1/touchpoints/web/events", json=body, headers={"Authorization": f"Bearer {key}"})
    read = await make_key("read")
    # read after the answer's position: what recording them logs is in what is checked
    await hub_client.get(
        f"/v1/customers/email:zed.secret@example.org{after(await sent.json())}",
        headers={"Authorization": f"Bearer {read}"},
    )
    await hub_client.get("/v1/customers/phone:+442079460958", headers={"Authorization": f"Bearer {read}"})
    err = capsys.readouterr().err
    assert '"route"' in err  # the access log ran
    for secret in ("zed.secret", "2079460958", "Zebulon"):
        assert secret not in err
