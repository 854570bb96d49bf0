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
JSON and writes nothing. ``I-Twilio-Idempotency-Token`` is the request key: a retry gets the
TwiML of the first answer and records nothing new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from prm_ivr import Call, Engine, IvrCalls, Turn, menu_for
from twilio.request_validator import SIGNATURE_SETTINGS_HEADER, RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import Gather, VoiceResponse

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.model import Adapter
from prm_core.server.errors import ApiError
from prm_core.server.routes import api, parse_json_body
from prm_core.server.state import HUB

__all__ = ["BASE", "prm_adapters", "render"]

BASE = "/v1/touchpoints/ivr/twilio"
TERMINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
log = structlog.get_logger(__name__)


def render(turn: Turn, gather_url: str, *, dial: Mapping[str, str] | None = None, voice: str | None = None) -> str:
    """The TwiML of one turn. ``gather_url`` is the action URL (without ``node``/``attempt``)."""
    response = VoiceResponse()
    say_kw = {"voice": voice} if voice else {}
    for line in turn.say:
        response.say(line, **say_kw)
    if turn.gather is not None:
        g = turn.gather
        action = f"{gather_url}?{urlencode({'node': g.node, 'attempt': g.attempt})}"
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
        self.validator = RequestValidator(token)
        self.public_url = config.public_url
        self.engine = engine
        self.dial = {str(k): str(v) for k, v in twilio.get("dial", {}).items()}
        self.say_voice = twilio.get("voice")

    async def _verified(self, request: web.Request) -> Mapping[str, Any]:
        """The webhook's parameters once its signature is checked; 401 otherwise."""
        signature = request.headers.get("X-Twilio-Signature")
        if not signature:
            raise ApiError(401, "unauthorized", "the X-Twilio-Signature header is missing", "X-Twilio-Signature")
        url = self.public_url + request.raw_path
        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        raw = await request.read()
        if request.content_type == "application/json":
            # Twilio signs a JSON body through the bodySHA256 query parameter of the URL
            if "bodySHA256" not in request.query:
                raise ApiError(401, "unauthorized", "a JSON webhook must carry bodySHA256", "bodySHA256")
            body_text = raw.decode("utf-8", errors="replace")
            valid = self.validator.validate(url, body_text, signature, algorithm)
            if not valid:
                raise ApiError(401, "unauthorized", "the X-Twilio-Signature does not match", "X-Twilio-Signature")
            params = parse_json_body(raw)
            if not isinstance(params, Mapping):
                raise ApiError(400, "malformed_json", "the body must be a JSON object")
            return {str(k): v for k, v in params.items()}
        form = await request.post()
        if not self.validator.validate(url, form, signature, algorithm):
            raise ApiError(401, "unauthorized", "the X-Twilio-Signature does not match", "X-Twilio-Signature")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def _call(self, params: Mapping[str, Any]) -> Call:
        sid = params.get("CallSid")
        if not isinstance(sid, str) or not sid or len(sid) > 64:
            raise ApiError(422, "invalid", "CallSid is required", "CallSid")
        caller = params.get("From") or params.get("Caller")
        return Call(id=sid, source="twilio", caller_number=caller if isinstance(caller, str) and caller else None)

    @staticmethod
    def _key(request: web.Request, params: Mapping[str, Any]) -> str:
        """Twilio's idempotency token, else a digest of what was asked (a retry repeats both)."""
        token = request.headers.get("I-Twilio-Idempotency-Token")
        if token and len(token) <= 100:
            return "t-" + hashlib.sha256(token.encode()).hexdigest()[:32]
        canonical = json.dumps([request.path_qs, sorted(params.items())], default=str)
        return "p-" + hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def _respond(self, turn: Turn) -> web.Response:
        return _twiml(render(turn, self.public_url + BASE + "/gather", dial=self.dial, voice=self.say_voice))

    async def voice(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        calls = IvrCalls(request.app[HUB], self.engine)
        turn = await calls.start(self._call(params), self._key(request, params), {"direction": params.get("Direction")})
        return self._respond(turn)

    async def gather(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        try:
            attempt = max(1, min(int(request.query.get("attempt", "1")), 99))
        except ValueError:
            raise ApiError(422, "invalid", "attempt must be a whole number", "attempt") from None
        digits, speech = params.get("Digits"), params.get("SpeechResult")
        calls = IvrCalls(request.app[HUB], self.engine)
        turn = await calls.answer(
            self._call(params), self._key(request, params), request.query.get("node"),
            digits=digits if isinstance(digits, str) else None, speech=speech if isinstance(speech, str) else None,
            attempt=attempt,
        )  # fmt: skip
        return self._respond(turn)

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
        errors = {200: "TwiML", 401: "Missing or forged X-Twilio-Signature"}

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
