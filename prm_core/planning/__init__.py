"""Relationship planning: the value model, tiers and segments, offers, campaigns, scorecards.

See docs/planning.md. :class:`Planner` is built from the config when the hub starts;
:mod:`prm_core.planning.entitlements` is the service level by tier the partner playbook uses.
"""

from __future__ import annotations

from . import entitlements
from .planner import Planner, tier_rules
from .rules import NAMES, Rule, compile_rule

__all__ = ["NAMES", "Planner", "Rule", "compile_rule", "entitlements", "tier_rules"]
