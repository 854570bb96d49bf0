"""The rules language: what a rule that cannot be evaluated answers, which names a rule reads,
its length limit, the errors that name a bad rule, and rules over per-event figures kept
current on every event."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from prm_core.config import Config
from prm_core.errors import ConfigError, InvalidInput
from prm_core.hub import Hub
from prm_core.planning.rules import EVENT_NAMES, NAMES, compile_rule


def rule(text: str) -> Any:
    return compile_rule("r", text, where="[tiers.rules].r")


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("days_since_last_purchase < 30", {"days_since_last_purchase": None}),
        ("not (days_since_last_purchase < 30)", {"days_since_last_purchase": None}),
        ("traits['vip'] == true", {"traits": {}}),
        ("traits['vip'] == true", {"traits": None}),
        ("lifetime_revenue / order_count > 5", {"lifetime_revenue": 5.0, "order_count": 0.0}),
        ("traits['age'] > 3", {"traits": {"age": "three"}}),
        ("lifetime_revenue > 5", {}),
    ],
)
def test_a_rule_that_cannot_be_evaluated_on_the_facts_does_not_match(text, facts):
    assert rule(text).matches(facts) is False


def test_a_rule_matches_when_its_facts_satisfy_it():
    assert rule("days_since_last_purchase < 30").matches({"days_since_last_purchase": 3.0}) is True
    assert rule("traits['vip'] == true").matches({"traits": {"vip": True}}) is True
    assert rule("traits['vip'] == true").matches({"traits": {"vip": False}}) is False


def test_a_rule_names_what_it_reads():
    assert rule("event_count >= 3 and traits['city'] == 'Paris'").names == {"event_count", "traits"}
    assert rule("lifetime_revenue > 10").names == {"lifetime_revenue"}


def test_a_rule_may_be_2000_characters_long_and_no_longer():
    text = "event_count >= 3" + " " * (2000 - len("event_count >= 3"))
    assert len(text) == 2000
    assert rule(text).matches({"event_count": 3.0})
    with pytest.raises(ConfigError, match=r"\[tiers.rules\].r: the rule is longer than 2000 characters"):
        rule(text + " ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the rule must be a non-empty string"),
        ("   ", "the rule must be a non-empty string"),
        (5, "the rule must be a non-empty string"),
        ("shoe_size > 3", "unknown name 'shoe_size'; known: average_sale, churn_risk"),
        ("event_count >=", "syntax error in 'event_count >='"),
        ("event_count >= >= 3", "syntax error near '>=' in 'event_count >= >= 3'"),
        ("event_count > 'many'", "EvaluationError"),
        # one spelling for a trait, the one rule-engine keeps: traits['vip']
        ("traits.vip == true", "use mapping['vip'] instead"),
    ],
)
def test_a_bad_rule_is_refused_naming_where_it_is(text, message):
    with pytest.raises(ConfigError, match=r"^\[tiers\.rules\]\.r: ") as info:
        rule(text)
    assert message in str(info.value)
    with pytest.raises(InvalidInput) as given:
        compile_rule("r", text, where="segment", config=False)
    assert given.value.field == "rule"
    assert message in str(given.value)


def test_the_event_names_are_names_of_the_language():
    assert EVENT_NAMES <= set(NAMES)


def page(n: int, email: str, at: Any) -> dict:
    return {"id": f"p-{email}-{n}", "type": "page", "occurred_at": at.isoformat(), "identities": {"email": email}}


# each rule reads a figure that a page view (no sale) changes: the first events leave it
# unmatched, the last one matches it
PER_EVENT = {
    "event_count": ("event_count >= 3", [("web", 0), ("web", 0), ("web", 0)]),
    "touchpoints": ("'pos' in touchpoints", [("web", 0), ("pos", 0)]),
    "touchpoint_count": ("touchpoint_count >= 2", [("web", 0), ("callcenter", 0)]),
    "days_since_first_seen": ("days_since_first_seen > 30", [("web", 0), ("web", -40)]),
    "days_since_last_seen": ("days_since_last_seen < 1", [("web", -40), ("web", 0)]),
}


@pytest.mark.parametrize("name", sorted(PER_EVENT))
async def test_a_tier_rule_over_a_per_event_figure_is_evaluated_on_every_event(database_url, frozen_clock, name):
    text, steps = PER_EVENT[name]
    assert name in rule(text).names
    assert name in EVENT_NAMES
    config = Config(database_url=database_url, raw={"tiers": {"rules": {"t": text}}})
    async with Hub.open(config, autoload=True) as hub:
        for n, (touchpoint, days) in enumerate(steps):
            event = page(n, "gu@example.com", frozen_clock.now + timedelta(days=days))
            await hub.record(hub.parse_events(event, touchpoint))
            tier = (await hub.view("email:gu@example.com")).customer.tier
            assert tier == ("t" if n == len(steps) - 1 else None), (name, n)
