"""The answer page of a survey link: ``GET /v1/surveys/{token}`` shows the scale, ``POST``
records the score.

The token is the credential (:mod:`prm_core.surveys.links`): no key, no cookie, no script.
The page is plain HTML, one form whose buttons are the scores, so one press answers, with or
without JavaScript, by keyboard or screen reader. Opening the page never answers, whatever
its query says (``?score=4`` only shows that score chosen, to be sent with one press): mail
scanners and link previews open every link of an email, and must not answer for the
customer. A forged, damaged or expired token is a 401, an unknown survey a 404; neither
writes anything. A ``POST`` with a JSON body (``{"score": 4}``) is answered in JSON, for a
sender with its own page.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..errors import InvalidInput, NotFound
from ..server.auth import limit_keyless
from ..server.errors import ApiError
from ..server.routes import PAGE_HEADERS, api, read_json
from ..server.state import HUB
from ..store.tables import utcnow
from .links import BadToken, read_token
from .scales import SCALES, category

__all__ = ["survey_routes"]

routes = web.RouteTableDef()
HEADERS = PAGE_HEADERS
QUESTIONS = {
    "csat": "How satisfied are you with your recent experience?",
    "nps": "How likely are you to recommend us to a friend or colleague?",
}
ENDS = {"csat": ("very dissatisfied", "very satisfied"), "nps": ("not at all likely", "extremely likely")}
STYLE = """
body{font-family:system-ui,sans-serif;margin:0;padding:1.5rem;color:#1a1a1a;background:#fff;line-height:1.5}
main{max-width:40rem;margin:0 auto}
fieldset{border:0;padding:0;margin:0}
legend{font-size:1.25rem;font-weight:600;margin-bottom:.5rem}
.scale{display:flex;flex-wrap:wrap;gap:.5rem;margin:.75rem 0}
button{font:inherit;min-width:3rem;min-height:3rem;border:2px solid #1f4e8c;border-radius:.375rem;
background:#fff;color:#1f4e8c;cursor:pointer}
button:hover,button:focus-visible{background:#1f4e8c;color:#fff;outline:3px solid #f2a900;outline-offset:2px}
button.chosen,button.send{background:#1f4e8c;color:#fff;padding:0 1.25rem}
.ends{display:flex;justify-content:space-between;font-size:.9rem;color:#444}
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
    return web.Response(text=text, status=status, content_type="text/html", headers=HEADERS)


def _refused(status: int) -> web.Response:
    if status == 401:
        words = "This link is not valid, or it has expired."
    else:
        words = "This survey is not open to answers."
    return _page("Survey", f"<h1>Survey</h1><p>{words}</p>", status)


def _thanks(answer: Mapping[str, Any], again: bool) -> web.Response:
    low, high = answer.get("scale") or SCALES.get(str(answer.get("kind")), (0, 0))
    said = f"You answered {int(answer.get('score', 0))} on a scale from {low} to {high}."
    first = " Only your first answer counts." if again else ""
    return _page("Thank you", f'<h1>Thank you</h1><p role="status">{said}{first}</p>')


def _scale_form(kind: str, question: str, chosen: int | None) -> str:
    low, high = SCALES[kind]
    first, last = ENDS[kind]
    buttons = []
    for n in range(low, high + 1):
        words = f"{n} ({first})" if n == low else f"{n} ({last})" if n == high else str(n)
        cls = ' class="chosen" aria-pressed="true"' if n == chosen else ""
        buttons.append(
            f'<button type="submit" name="score" value="{n}" aria-label="{html.escape(words)}"{cls}>{n}</button>'
        )
    confirm = ""
    if chosen is not None:
        confirm = (
            '<form method="post" action=""><p>You chose '
            f"<strong>{chosen}</strong>.</p>"
            f'<input type="hidden" name="score" value="{chosen}">'
            f'<button type="submit" class="send">Send {chosen}</button></form>'
            "<p>Or choose another score:</p>"
        )
    return (
        f'<h1>Survey</h1>{confirm}<form method="post" action=""><fieldset aria-describedby="ends">'
        f"<legend>{html.escape(question)}</legend>"
        f'<div class="scale">{"".join(buttons)}</div>'
        f'<p class="ends" id="ends"><span>{low} = {first}</span><span>{high} = {last}</span></p>'
        "</fieldset></form>"
    )


async def _survey(request: web.Request) -> tuple[Any, str] | web.Response:
    """The survey message the token names (and its kind), or the refusal to answer with."""
    limit_keyless(request, "surveys")
    hub = request.app[HUB]
    try:
        message_id, kind = read_token(hub.surveys.key, request.match_info["token"], utcnow())
    except BadToken:
        return _refused(401)
    try:
        return await hub.surveys.survey_message(message_id, kind), kind
    except NotFound:
        return _refused(404)


def _score_of(raw: Any, kind: str) -> int | None:
    if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) <= 2:
        raw = int(raw.strip())
    low, high = SCALES[kind]
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        return None
    return raw


@routes.get("/v1/surveys/{token}")
@api(
    "A survey's answer page (HTML): the scale, one button per score; the signed token is the credential."
    " Opening it never answers (?score=N only shows N chosen)",
    scope=None,
    params={
        "token": "The survey link's signed token",
        "score": "A score to show chosen, for one press to send (opening the page never answers)",
    },
    responses={200: "text/html", 401: "Forged or expired token", 404: "No such survey", 429: "Too many calls"},
)
async def get_survey(request: web.Request) -> web.Response:
    found = await _survey(request)
    if isinstance(found, web.Response):
        return found
    message, kind = found
    hub = request.app[HUB]
    answered = await hub.surveys.answer_of(message)
    if answered is not None:
        return _thanks(answered, again=False)
    survey = message.data.get("survey") or {}
    question = survey.get("question") or QUESTIONS[kind]
    chosen = _score_of(request.query.get("score"), kind)
    return _page("Survey", _scale_form(kind, str(question), chosen))


@routes.post("/v1/surveys/{token}")
@api(
    'Answer a survey: a form\'s score=N, or JSON {"score": N}; the first answer per survey counts.'
    " The signed token is the credential",
    scope=None,
    body={"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}},
    responses={
        200: "The answer page (form), or the answer (JSON: already answered, the first answer)",
        201: "The answer (JSON)",
        401: "Forged or expired token",
        404: "No such survey",
        422: "Score off the survey's scale; `field` names it",
        429: "Too many calls",
    },
)
async def post_survey(request: web.Request) -> web.Response:
    as_json = request.content_type == "application/json"
    found = await _survey(request)
    if isinstance(found, web.Response):
        if as_json:
            raise ApiError(found.status, "unauthorized" if found.status == 401 else "not_found", _plain(found.status))
        return found
    message, kind = found
    if as_json:
        body = await read_json(request)
        raw = body.get("score") if isinstance(body, dict) else None
    else:
        raw = (await request.post()).get("score")
    score = _score_of(raw, kind)
    low, high = SCALES[kind]
    if score is None:
        if as_json:
            raise InvalidInput(f"score must be a whole number from {low} to {high}", "score")
        words = f"Choose a score from {low} to {high}."
        question = (message.data.get("survey") or {}).get("question") or QUESTIONS[kind]
        body_html = f'<p role="alert">{words}</p>' + _scale_form(kind, str(question), None)
        return _page("Survey", body_html, 422)
    recorded, answer = await request.app[HUB].surveys.answer_by_link(message, score)
    if not as_json:
        return _thanks(answer, again=recorded.duplicate and answer.get("score") != score)
    shown = {
        "kind": kind,
        "score": answer.get("score"),
        "category": answer.get("category") or category(kind, int(answer.get("score", score))),
        "about": answer.get("about"),
        "first_answer": not recorded.duplicate,
    }
    return web.json_response(shown, status=200 if recorded.duplicate else 201)


def _plain(status: int) -> str:
    return "the survey token is forged, damaged or expired" if status == 401 else "no such survey"


def survey_routes() -> web.RouteTableDef:
    return routes
