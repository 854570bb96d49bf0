"""What the 360 view and the scorecard read of survey answers (``survey_answers``, one row per
survey answered): a customer's latest answers, and each touch point's figures for a period.

Per touch point rated (``about``): ``answers``; for CSAT its ``answers``, ``average`` (two
decimals) and ``satisfied_rate`` (the share of 4 and 5); for NPS its ``answers``,
``promoters`` (9-10), ``passives`` (7-8), ``detractors`` (0-6) and ``nps`` (the percentage of
promoters less that of detractors, -100 to 100, one decimal). One grouped query each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store.lists import one_of
from ..store.tables import survey_answers
from .scales import SCALES, category

__all__ = ["MAX_IN_VIEW", "answers_of", "survey_figures"]

MAX_IN_VIEW = 10
_A = survey_answers.c
_OF_CUSTOMERS = {
    pg: sa.select(survey_answers)
    .where(one_of(_A.customer_id, "owners", pg))
    .order_by(_A.answered_at.desc(), _A.message_id)
    .limit(MAX_IN_VIEW)
    for pg in (False, True)
}


def answers_of(conn: Connection, owners: Sequence[str]) -> list[dict[str, Any]]:
    """The latest answers of these customers (a customer, those merged into it, a group's
    members), newest first."""
    rows = conn.execute(_OF_CUSTOMERS[conn.dialect.name == "postgresql"], {"owners": list(owners)})
    return [
        {
            "kind": r.kind,
            "score": r.score,
            "scale": list(SCALES[r.kind]),
            "category": category(r.kind, r.score),
            "about": r.about,
            "answered_at": r.answered_at.isoformat().replace("+00:00", "Z"),
            "via": r.via,
            "trigger": r.trigger,
            "touchpoint": r.touchpoint,
            "event_id": r.event_id,
        }
        for r in rows
        if r.kind in SCALES
    ]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def survey_figures(conn: Connection, since_day: str) -> dict[str, dict[str, Any]]:
    """Each rated touch point's survey figures over the answers of ``since_day`` (``YYYY-MM-DD``) on."""
    q = (
        sa.select(
            _A.about,
            _A.kind,
            sa.func.count().label("answers"),
            sa.func.sum(_A.score).label("total"),
            sa.func.sum(sa.case((_A.score >= 4, 1), else_=0)).label("satisfied"),
            sa.func.sum(sa.case((_A.score >= 9, 1), else_=0)).label("promoters"),
            sa.func.sum(sa.case((_A.score <= 6, 1), else_=0)).label("detractors"),
        )
        .where(_A.day >= since_day)
        .group_by(_A.about, _A.kind)
    )
    found: dict[str, dict[str, Any]] = {}
    for r in conn.execute(q):
        n = int(r.answers)
        figures = found.setdefault(r.about, {"answers": 0, "csat": None, "nps": None})
        figures["answers"] += n
        if r.kind == "csat":
            figures["csat"] = {
                "answers": n,
                "average": round(int(r.total) / n, 2),
                "satisfied_rate": _rate(int(r.satisfied), n),
            }
        elif r.kind == "nps":
            promoters, detractors = int(r.promoters), int(r.detractors)
            figures["nps"] = {
                "answers": n,
                "promoters": promoters,
                "passives": n - promoters - detractors,
                "detractors": detractors,
                "nps": round((promoters - detractors) * 100 / n, 1),
            }
    return found


def no_answers() -> dict[str, Any]:
    """The figures of a touch point no survey answer rated in the period."""
    return {"answers": 0, "csat": None, "nps": None}
