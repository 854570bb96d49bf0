"""The consent rule every part of value delivery shares (prm_core.consent)."""

import doctest

import pytest

from prm_core import consent
from prm_core.consent import allows


def test_doctests() -> None:
    assert doctest.testmod(consent).failed == 0


def test_defaults_without_any_consent() -> None:
    assert allows([], "personalization") is True
    assert allows([], "partner_sharing", "web") is True
    assert allows([], "marketing", "email") is False


def test_latest_of_equally_specific_wins() -> None:
    given = [
        {"purpose": "personalization", "channel": "*", "granted": False, "recorded_at": "2026-02-01T00:00:00Z"},
        {"purpose": "personalization", "channel": "*", "granted": True, "recorded_at": "2026-01-01T00:00:00Z"},
    ]
    assert allows(given, "personalization", "web") is False


def test_channel_specific_beats_everywhere_and_other_channels_do_not_count() -> None:
    given = [
        {"purpose": "marketing", "channel": "sms", "granted": True, "recorded_at": "2026-03-01T00:00:00Z"},
        {"purpose": "marketing", "channel": "*", "granted": False, "recorded_at": "2026-01-01T00:00:00Z"},
    ]
    assert allows(given, "marketing", "sms") is True
    assert allows(given, "marketing", "email") is False
    assert allows(given, "marketing") is False


def test_configured_defaults_and_unknown_purpose() -> None:
    assert allows([], "marketing", defaults={"marketing": True}) is True
    with pytest.raises(ValueError, match="unknown consent purpose 'profiling'"):
        allows([], "profiling")
