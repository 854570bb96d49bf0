"""Identity normalization: one canonical spelling per identifier.

Built-in namespaces: ``email`` (trimmed, lower-cased), ``phone`` (E.164 through
``phonenumbers``, with the configured default region for national numbers),
``user_id``, ``anonymous_id``, ``loyalty_card``, ``account_id`` (trimmed). Plugins add
namespaces with ``prm_identity_namespaces``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import phonenumbers

from .errors import InvalidInput
from .model import Identity, IdentityNamespace

__all__ = ["builtin_namespaces", "normalize_email", "normalize_identities", "normalize_phone", "parse_ref"]

MAX_VALUE_LENGTH = 256


def normalize_email(raw: str, region: str) -> str:
    value = raw.strip().lower()
    local, at, domain = value.partition("@")
    if not at or not local or "@" in domain or "." not in domain or " " in value or domain.startswith("."):
        raise ValueError("is not an email address")
    return value


def normalize_phone(raw: str, region: str) -> str:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"is not a phone number ({exc})") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _strip(raw: str, region: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("is empty")
    return value


def builtin_namespaces() -> list[IdentityNamespace]:
    """The namespaces every hub knows."""
    return [
        IdentityNamespace("email", normalize_email, description="trimmed and lower-cased"),
        IdentityNamespace("phone", normalize_phone, description="E.164, default region from [identity]"),
        IdentityNamespace("user_id", _strip, description="the company's own user id"),
        IdentityNamespace("anonymous_id", _strip, description="a browser or device id before login"),
        IdentityNamespace("loyalty_card", _strip, description="a loyalty card number"),
        IdentityNamespace("account_id", _strip, description="a customer account number"),
    ]


def normalize_identities(
    raw: Any,
    namespaces: Mapping[str, IdentityNamespace],
    region: str,
    *,
    field: str = "identities",
) -> tuple[Identity, ...]:
    """Validate and normalize ``{namespace: value}`` into sorted, de-duplicated identities.

    Raises :class:`InvalidInput` naming the field (``identities.phone``) on the first
    problem. Unknown namespaces are refused rather than stored unnormalized, because an
    unnormalized identity would silently split one customer in two.
    """
    if raw is None:
        return ()
    if type(raw) is not dict and not isinstance(raw, Mapping):  # a dict skips the ABC's slower check
        raise InvalidInput(f"{field} must be an object of namespace: value", field)
    result: set[Identity] = set()
    for namespace, value in raw.items():
        where = f"{field}.{namespace}"
        ns = namespaces.get(namespace)
        if ns is None:
            raise InvalidInput(
                f"unknown identity namespace {namespace!r}; known: {', '.join(sorted(namespaces))}", where
            )
        if value is None:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise InvalidInput(f"{where} must be a string", where)
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidInput(f"{where} is longer than {MAX_VALUE_LENGTH} characters", where)
        if "\x00" in value:  # see prm_core.events._string
            raise InvalidInput(f"{where} must not contain NUL characters", where)
        try:
            result.add(Identity(namespace, ns.normalize(value, region)))
        except ValueError as exc:
            # the message names the field, never the value: the value is personal data
            raise InvalidInput(f"{where} {exc}", where) from None
    if len(result) < 2:
        return tuple(result)
    return tuple(sorted(result, key=lambda i: (i.namespace, i.value)))


def parse_ref(ref: str, namespaces: Mapping[str, IdentityNamespace], region: str, *, field: str = "ref") -> Identity:
    """``namespace:value`` as a normalized identity; :class:`InvalidInput` naming ``field`` if not."""
    namespace, sep, raw = ref.partition(":")
    if not sep or not namespace or not raw:
        raise InvalidInput(f"{field} must be namespace:value", field)
    ns = namespaces.get(namespace)
    if ns is None:
        raise InvalidInput(f"unknown identity namespace {namespace!r}; known: {', '.join(sorted(namespaces))}", field)
    try:
        return Identity(namespace, ns.normalize(raw, region))
    except ValueError as exc:
        raise InvalidInput(f"{field}: {namespace} {exc}", field) from None
