"""Twilio's webhook signature, checked once for every Twilio route of the hub (the SMS touch
point's and the voice adapter's, ``prm_twilio``).

Twilio signs each webhook with ``X-Twilio-Signature``: an HMAC of the URL it called (query
included) and the form's parameters, under the account's auth token (or a webhook key). The
algorithm is HMAC-SHA1, or the one ``X-Twilio-Webhooks-Signature-Settings`` names
(``algorithm=HMAC_SHA256``); the ``twilio`` library's ``RequestValidator`` checks both. A
JSON body is signed through the ``bodySHA256`` query parameter of the URL.

:meth:`TwilioSignature.verified` reads only what Twilio sends (a form, or a JSON object where
the route takes one; anything else is a 415, not parsed) and returns the parameters once the
signature matches: a missing or forged signature, or an algorithm the library cannot verify,
is a 401. A form's signature covers its decoded parameters, so the form is decoded (as text,
strictly) first; nothing else is looked at before the signature matches. A parameter repeated
with different values, or holding a control character (a NUL), is a 422.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from prm_core.plugin import ApiError, parse_json_body

__all__ = ["CONTROL", "FORM", "SIGNATURE_ALGORITHMS", "TwilioSignature"]

FORM = "application/x-www-form-urlencoded"
SIGNATURE_ALGORITHMS = frozenset({HMAC_SHA1, HMAC_SHA256})  # what the twilio library can verify
# C0 controls but tab, newline and carriage return: nothing Twilio sends, and NUL is unstorable
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_FIELDS = 500


class TwilioSignature:
    """Checks the signature of Twilio's webhooks against ``public_url`` + the path and query
    Twilio called. ``json_bodies``: the route also takes a JSON body (a voice webhook can)."""

    def __init__(self, auth_token: str, public_url: str, *, json_bodies: bool = False) -> None:
        self.validator = RequestValidator(auth_token)
        self.public_url = public_url
        self.json_bodies = json_bodies

    async def verified(self, request: web.Request) -> dict[str, str]:
        """The webhook's parameters once its signature matches; a 401 otherwise, before any use."""
        signature = request.headers.get("X-Twilio-Signature")
        if not signature:
            raise ApiError(401, "unauthorized", "the X-Twilio-Signature header is missing", "X-Twilio-Signature")
        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        if algorithm.upper() not in SIGNATURE_ALGORITHMS:
            # refused here, before the library's validator would log the header's text as sent
            raise ApiError(
                401, "unauthorized", f"{SIGNATURE_SETTINGS_HEADER} names an unsupported algorithm",
                SIGNATURE_SETTINGS_HEADER,
            )  # fmt: skip
        types = (FORM, "application/json") if self.json_bodies else (FORM,)
        if request.content_type not in types:
            raise ApiError(415, "unsupported_media_type", f"Twilio webhooks here are {' or '.join(types)}")
        url = self.public_url + request.raw_path
        raw = await request.read()
        forged = ApiError(401, "unauthorized", "the X-Twilio-Signature does not match", "X-Twilio-Signature")
        if request.content_type == "application/json":
            # Twilio signs a JSON body through the bodySHA256 query parameter of the URL
            if "bodySHA256" not in request.query:
                raise ApiError(401, "unauthorized", "a JSON webhook must carry bodySHA256", "bodySHA256")
            if not self.validator.validate(url, raw.decode("utf-8", errors="replace"), signature, algorithm):
                raise forged
            parsed = parse_json_body(raw)
            if not isinstance(parsed, Mapping):
                raise ApiError(400, "malformed_json", "the body must be a JSON object")
            params = {str(k): v for k, v in parsed.items() if isinstance(v, str)}
        else:
            try:
                pairs = parse_qsl(
                    raw.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS
                )
            except (UnicodeDecodeError, ValueError):
                raise ApiError(400, "bad_request", "the body is not a URL-encoded form of UTF-8 text") from None
            if not self.validator.validate(url, MultiDict(pairs), signature, algorithm):
                raise forged
            params = dict(pairs)
            if len(set(pairs)) != len(params):
                # the signature covers each name's set of values, not their order: with two
                # values, which one counts would be the sender's choice
                repeated = sorted(name for name in params if len({v for k, v in pairs if k == name}) > 1)
                raise ApiError(422, "invalid", "a parameter is repeated with different values", repeated[0][:64])
        for name in sorted(params):
            if CONTROL.search(name) or CONTROL.search(params[name]):
                field = name[:64] if not CONTROL.search(name) else None
                raise ApiError(422, "invalid", "a parameter holds a control character", field)
        return params
