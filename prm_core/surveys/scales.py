"""Survey scales, and reading a score out of a customer's reply.

``csat`` is a score from 1 to 5 (satisfied: 4 or 5); ``nps`` a score from 0 to 10
(promoters 9-10, passives 7-8, detractors 0-6). A reply is an answer when it starts with a
score on the survey's scale: ``4``, ``4 - great``, ``9/10``, ``8 out of 10, quick visit``,
``five``, ``Five stars!``, ``★★★★``. A number past the scale, a score "out of" another scale
(``8/10`` to a 1-5 survey), a decimal (``4.5``), a time (``10:30``), two numbers (``4-5``,
``3 or 4``) or a number word inside a sentence (``one more thing``) is not an answer.
"""

from __future__ import annotations

import re
from typing import Any, Literal

__all__ = ["SCALES", "Kind", "category", "describe", "parse_score"]

Kind = Literal["csat", "nps"]
SCALES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10)}
NAMES = {"csat": "CSAT", "nps": "NPS"}

_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_NUMBER = r"\d{1,2}|" + "|".join(_WORDS)
_OF = r"(?:\s*(?:/|out\s+of|of)\s*(?P<of>\d{1,2}|" + "|".join(_WORDS) + r"))?"
# a score in digits leads the reply, a comment may follow: "4 - great", "9/10 would recommend"
_DIGITS = re.compile(r"^[\s\"'(\[]*(?P<n>\d{1,2})(?![.,:]\d)(?!\d)" + _OF + r"(?![\w.,:]*\d)(?!\w)", re.IGNORECASE)
# a score in words is the whole reply: "five", "Five stars!", "ten out of ten"
_WORD = re.compile(
    r"^[\s\"'(\[]*(?P<n>" + "|".join(_WORDS) + r")(?:\s+(?:stars?|points?))?" + _OF + r"[\s.!)\]\"']*$",
    re.IGNORECASE,
)
# another number right after the first: a range or a hesitation ("4-5", "3 or 4", "3 5")
_SECOND = re.compile(r"\s*(?:-|\u2013|or|to|and|,)?\s*\d", re.IGNORECASE)
_STARS = re.compile(r"^\s*(?:[★⭐]\ufe0f?\s*){1,10}$")


def _value(text: str) -> int:
    return int(text) if text.isdigit() else _WORDS[text.lower()]


def parse_score(text: str, kind: str) -> int | None:
    """The score ``text`` gives on ``kind``'s scale, or ``None`` when it gives none on it."""
    if kind not in SCALES or not isinstance(text, str) or len(text) > 2000:
        return None
    low, high = SCALES[kind]
    stripped = text.strip()
    if _STARS.match(stripped):
        score = sum(1 for ch in stripped if ch in "★⭐")
        return score if kind == "csat" and low <= score <= high else None
    found = _DIGITS.match(stripped) or _WORD.match(stripped)
    if found is None or _SECOND.match(stripped, found.end()):
        return None
    score = _value(found.group("n"))
    of = found.group("of")
    if of is not None and _value(of) != high:
        return None  # "8/10" to a 1-5 survey: a score on another scale
    return score if low <= score <= high else None


def category(kind: str, score: int) -> str:
    """``promoter``, ``passive`` or ``detractor`` (NPS); ``satisfied`` (4-5), ``neutral`` (3)
    or ``dissatisfied`` (1-2) (CSAT)."""
    if kind == "nps":
        return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
    return "satisfied" if score >= 4 else "neutral" if score == 3 else "dissatisfied"


def describe(kind: str, score: int, about: str) -> dict[str, Any]:
    """What a ``survey.answered`` event says of the score, beside where it came from."""
    low, high = SCALES[kind]
    found: dict[str, Any] = {
        "kind": kind,
        "score": score,
        "scale": [low, high],
        "about": about,
        "category": category(kind, score),
        # one line for people (the timeline's summary)
        "answer": f"{NAMES[kind]} {score}/{high} about {about}",
    }
    if kind == "csat":
        found["satisfied"] = score >= 4
    return found
