"""Surveys: what customers answer to a trigger's survey message, as the voice of the customer.

A trigger's ``message`` action with ``survey = "csat"`` (1 to 5) or ``"nps"`` (0 to 10)
asks for a score about a touch point (``about``; by default what started the trigger, such
as ``field_service`` for a technician's visit). The customer answers by replying (a touch
point records the reply as a ``message.received`` event) or through the message's signed
link (``GET``/``POST /v1/surveys/{token}``). Either way the answer is a ``survey.answered``
event on the customer (the first answer per survey counts), shown in the 360 view, and the
scorecard gains each touch point's answers, CSAT and NPS. See ``docs/surveys.md``.
"""

from __future__ import annotations

from .answers import ANSWERED, RECEIVED, Surveys, answer_id
from .links import SurveySettings, score_links
from .scales import SCALES, category, parse_score

__all__ = [
    "ANSWERED",
    "RECEIVED",
    "SCALES",
    "SurveySettings",
    "Surveys",
    "answer_id",
    "category",
    "parse_score",
    "score_links",
]
