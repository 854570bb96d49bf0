"""Twilio Programmable Voice on the IVR touch point: webhooks in, TwiML out.

Routes (mounted when ``[touchpoints.ivr] twilio_auth_token`` is set; ``[server].public_url``
is then required, since Twilio signs the URL it called):

- ``POST /v1/touchpoints/ivr/twilio/voice``: the number's "A call comes in" webhook; answers
  the welcome and the start menu as ``<Say>`` + ``<Gather>`` + ``<Redirect>``;
- ``POST /v1/touchpoints/ivr/twilio/gather?node=..&attempt=..``: the ``<Gather>`` action (and
  the ``<Redirect>`` when nothing was said), with ``Digits`` or ``SpeechResult``; answers the
  next menu, a transfer (``<Enqueue>``, or ``<Dial>`` for queues listed in
  ``[touchpoints.ivr.twilio.dial]``) or a goodbye (``<Hangup>``);
- ``POST /v1/touchpoints/ivr/twilio/status``: the call's status callback; a call that ends
  before the menu did (the caller hung up) is recorded ``abandoned``.

Every request is checked with the ``twilio`` library's ``RequestValidator`` against
``public_url`` + the path and query Twilio called: form bodies by their parameters, JSON bodies
by the ``bodySHA256`` query parameter. A missing or forged ``X-Twilio-Signature`` gets 401
JSON and writes nothing; so does any other body (multipart, text: 415), which is not parsed.
A signed parameter holding a control character (a NUL) is a 422 naming it, and so is a
``CallSid`` that is not letters and digits: nothing is written.

Replays: Twilio signs no time, so a captured request stays valid. The request key is a digest
of exactly what the signature covers (the URL with its query, every parameter), so a retry or
a replay, whatever its ``I-Twilio-Idempotency-Token`` (unsigned), is the same request: it gets
the TwiML of the first answer and records nothing new. Each menu's action URL carries the key
of the request that asked it (``step``), so a caller who comes back to a menu and presses the
same key is a new request, and Twilio signs the step with the rest. A call that has ended
(hung up, transferred, served) takes no more turns: a new request for it is answered with
``<Hangup/>`` and records nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from prm_ivr import Call, Engine, IvrCalls, Turn, menu_for
from prm_sms.signatures import TwilioSignature
from twilio.twiml.voice_response import Gather, VoiceResponse

from prm_core.plugin import HUB, Adapter, ApiError, Config, ConfigError, api, hookimpl

__all__ = ["BASE", "prm_adapters", "render"]

BASE = "/v1/touchpoints/ivr/twilio"
TERMINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# Twilio's call SIDs are "CA" and 32 hex digits; letters and digits only keeps ids and logs clean
_SID = re.compile(r"^[A-Za-z0-9]{1,64}$")
log = structlog.get_logger(__name__)


def render(
    turn: Turn, gather_url: str, *, dial: Mapping[str, str] | None = None, voice: str | None = None,
    step: str | None = None,
) -> str:  # fmt: skip
    """The TwiML of one turn. ``gather_url`` is the action URL (without ``node``/``attempt``);
    ``step``, when given, is added to its query: the key of the request this turn answers."""
    response = VoiceResponse()
    say_kw = {"voice": voice} if voice else {}
    for line in turn.say:
        response.say(line, **say_kw)
    if turn.gather is not None:
        g = turn.gather
        query: dict[str, str | int] = {"node": g.node, "attempt": g.attempt}
        if step is not None:
            query["step"] = step
        action = f"{gather_url}?{urlencode(query)}"
        gather = Gather(
            input="dtmf speech", action=action, method="POST", num_digits=1, timeout=g.timeout_s,
            hints=", ".join(g.words) or None,
        )  # fmt: skip
        for line in turn.prompt:
            gather.say(line, **say_kw)
        response.append(gather)
        # Twilio goes on to the next verb when the caller said nothing: come back as "no input"
        response.redirect(action, method="POST")
    elif turn.transfer is not None:
        number = (dial or {}).get(turn.transfer)
        if number:
            response.dial(number)
        else:
            response.enqueue(turn.transfer)
    else:
        response.hangup()
    return str(response)


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml", charset="utf-8")


class TwilioVoice:
    """The webhook handlers, bound to the configuration they need."""

    def __init__(self, config: Config, engine: Engine) -> None:
        settings = config.touchpoint("ivr")
        token = settings.get("twilio_auth_token")
        if not isinstance(token, str) or not token:
            raise ConfigError("[touchpoints.ivr].twilio_auth_token must be the Twilio auth token (or env:VAR)")
        if not config.public_url:
            raise ConfigError(
                "[server].public_url is required with [touchpoints.ivr].twilio_auth_token: "
                "Twilio signs the URL it calls, and the hub checks the signature against it"
            )
        twilio = config.section("touchpoints", "ivr", "twilio")
        self.signature = TwilioSignature(token, config.public_url, json_bodies=True)
        self.public_url = config.public_url
        self.engine = engine
        self.dial = {str(k): str(v) for k, v in twilio.get("dial", {}).items()}
        self.say_voice = twilio.get("voice")

    async def _verified(self, request: web.Request) -> Mapping[str, str]:
        """The webhook's parameters once its signature is checked (:mod:`prm_sms.signatures`,
        a form or a JSON body); 401 otherwise."""
        return await self.signature.verified(request)

    def _call(self, params: Mapping[str, Any]) -> Call:
        sid = params.get("CallSid")
        if not isinstance(sid, str) or not _SID.match(sid):
            raise ApiError(422, "invalid", "CallSid is required: letters and digits, at most 64", "CallSid")
        caller = params.get("From") or params.get("Caller")
        return Call(id=sid, source="twilio", caller_number=caller if isinstance(caller, str) and caller else None)

    def _key(self, request: web.Request, params: Mapping[str, str]) -> str:
        """A digest of what the signature covers, the URL and every parameter: a retry and a
        replay repeat both (an unsigned header such as I-Twilio-Idempotency-Token cannot tell
        them apart), a new turn of the call differs in its URL's ``step`` or its input."""
        canonical = json.dumps([self.public_url + request.raw_path, sorted(params.items())])
        return "s" + hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def _respond(self, turn: Turn, key: str) -> web.Response:
        gather_url = self.public_url + BASE + "/gather"
        return _twiml(render(turn, gather_url, dial=self.dial, voice=self.say_voice, step=key))

    async def voice(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        call, key = self._call(params), self._key(request, params)
        calls = IvrCalls(request.app[HUB], self.engine)
        turn = await calls.start(call, key, {"direction": params.get("Direction")})
        return self._respond(turn, key)

    async def gather(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        try:
            attempt = max(1, min(int(request.query.get("attempt", "1")), 99))
        except ValueError:
            raise ApiError(422, "invalid", "attempt must be a whole number", "attempt") from None
        call, key = self._call(params), self._key(request, params)
        calls = IvrCalls(request.app[HUB], self.engine)
        turn = await calls.answer(
            call, key, request.query.get("node"),
            digits=params.get("Digits"), speech=params.get("SpeechResult"), attempt=attempt,
        )  # fmt: skip
        return self._respond(turn, key)

    async def status(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        call = self._call(params)
        status = params.get("CallStatus")
        if status in TERMINAL:
            calls = IvrCalls(request.app[HUB], self.engine)
            ended = await calls.end(call, "abandoned", {"call_status": status})
            log.info("twilio call ended", abandoned=ended, call_status=status)
        return _twiml(str(VoiceResponse()))

    def routes(self) -> tuple[web.RouteDef, ...]:
        errors = {
            200: "TwiML",
            401: "Missing or forged X-Twilio-Signature",
            415: "A body Twilio does not send (not a form or JSON)",
            422: "A bad CallSid, or a parameter holding a control character; `field` names it",
        }

        @api("Twilio voice webhook: a call comes in; answers TwiML", scope=None, responses=errors)
        async def voice(request: web.Request) -> web.StreamResponse:
            return await self.voice(request)

        @api("Twilio Gather action: the caller's input at a menu; answers TwiML", scope=None, responses=errors)
        async def gather(request: web.Request) -> web.StreamResponse:
            return await self.gather(request)

        @api("Twilio status callback: a call that ends mid-menu is abandoned", scope=None, responses=errors)
        async def status(request: web.Request) -> web.StreamResponse:
            return await self.status(request)

        return (
            web.post(f"{BASE}/voice", voice),
            web.post(f"{BASE}/gather", gather),
            web.post(f"{BASE}/status", status),
        )


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    if not config.touchpoint("ivr").get("twilio_auth_token"):
        return []  # not configured: no unauthenticated-by-default routes
    handlers = TwilioVoice(config, Engine(menu_for(config)))
    return [Adapter(name="twilio", touchpoint="ivr", routes=handlers.routes(), description=__doc__.split("\n")[0])]
