"""structlog set-up, with personal data redacted by a processor rather than by each caller.

:func:`configure_logging` is called once, by the entry point (``prm serve``); library
code only calls ``structlog.get_logger()``. Output is JSON unless on a terminal.

A service embedding the hub calls nothing: :func:`protect_logs` runs as the hub is built
(``Hub.open``, ``create_app``) and puts the redaction processors into whatever structlog
configuration is in force, or sets up the hub's own when there is none.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = [
    "PERSONAL_FIELDS",
    "configure_logging",
    "format_exception",
    "protect_logs",
    "redact",
    "redact_personal_data",
    "redaction_processors",
]

# keys whose values are personal data whatever they look like
PERSONAL_FIELDS = frozenset(
    {
        "name", "first_name", "last_name", "full_name", "firstName", "lastName", "email", "phone",
        "address", "street", "postal_code", "zip", "birthday", "ani", "caller", "from", "to",
        "identities", "traits", "value", "ssn", "card", "loyalty_card", "ip",
    }
)  # fmt: skip
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# a run of 7+ digits, optionally with +, spaces, dots, dashes or parentheses between them, that
# stands on its own: digits inside a token of letters and digits (a key id, a hash, a request
# id) are part of an identifier, not a phone number
_PHONE = re.compile(r"(?<![A-Za-z0-9])\+?\(?\d[\d\s().-]{5,}\d(?![A-Za-z0-9])")
REDACTED = "[redacted]"
# what the hub itself puts there (the access line's route is the route's pattern, not the path)
_NOT_PERSONAL = frozenset({"timestamp", "level", "logger", "request_id", "elapsed_ms", "method", "route", "status"})
WITHHELD = "(message withheld from the logs: it may quote personal data)"


def redact(value: Any, depth: int = 0) -> Any:
    """Mask emails and phone numbers in strings; recurse into containers."""
    if isinstance(value, str):
        return _PHONE.sub(REDACTED, _EMAIL.sub(REDACTED, value))
    if depth > 6:
        return REDACTED
    if isinstance(value, Mapping):
        return {k: REDACTED if k in PERSONAL_FIELDS else redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [redact(v, depth + 1) for v in value]
    return value


def redact_personal_data(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the last line of defence for personal data in logs."""
    for key, value in list(event_dict.items()):
        if key in PERSONAL_FIELDS:
            event_dict[key] = REDACTED
        elif key not in _NOT_PERSONAL:
            event_dict[key] = redact(value)
    return event_dict


def format_exception(exc: BaseException) -> str:
    """A traceback with every frame but no exception message: messages quote their input
    (``ValueError(f"cannot sync {email}")``, a driver echoing a row), which no pattern can
    recognize as personal data in general. The type and the frames say where it went wrong."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts: list[str] = []
    for n, link in enumerate(reversed(chain)):
        if n:
            parts.append("\nwhich led to:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        kind = type(link)
        parts.append(f"{kind.__module__}.{kind.__qualname__}: {WITHHELD}\n")
    return "".join(parts)


def _format_exc_info(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor in place of ``format_exc_info``: see :func:`format_exception`."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if isinstance(exc, BaseException):
        event_dict["exception"] = format_exception(exc)
    return event_dict


def _redact_exception(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # exception text can quote input (a failed SQL statement's parameters)
    if "exception" in event_dict:
        event_dict["exception"] = redact(event_dict["exception"])
    return event_dict


def redaction_processors() -> list[Any]:
    """The processors that keep personal data out of a log line, in order: personal fields
    and values masked, an exception rendered as its frames without its message (and without
    the frames' local variables, which hold the input being processed), and what is left of
    it masked too. Place them before any processor that renders an exception."""
    return [redact_personal_data, _format_exc_info, _redact_exception]


def protect_logs() -> None:
    """Make what the hub logs redacted, whoever configured logging; the hub calls it as it starts.

    - structlog not configured (a script, a service that logs with the standard library
      only): structlog gets the hub's set-up, as :func:`configure_logging` makes it, to
      standard error at level ``info``; the standard library's logging is left as it is.
    - configured without the redaction processors (a service with structlog of its own):
      :func:`redaction_processors` go in first, so that none of the service's processors
      sees a personal field or an exception (whose locals and message quote the input a
      renderer such as ``dict_tracebacks`` would print). The service's own lines pass
      through them too.
    - configured with them (``prm serve``, or a service that placed them itself): nothing.

    A service that configures structlog after the hub started places
    :func:`redaction_processors` in its chain itself.
    """
    if not structlog.is_configured():
        _configure_structlog("info", json=None, cache=False, out=sys.stderr)
        return
    processors = list(structlog.get_config()["processors"])
    if redact_personal_data in processors:
        return
    structlog.configure(processors=[*redaction_processors(), *processors])


def _configure_structlog(level: str, *, json: bool | None, cache: bool, out: TextIO) -> list[Any]:
    """structlog's half of :func:`configure_logging`; returns the processors shared with the
    standard library's records, and the renderer last."""
    if json is None:
        json = not out.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_personal_data,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, _format_exc_info, _redact_exception, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    return [*shared, renderer]


def configure_logging(
    level: str = "info", *, json: bool | None = None, cache: bool = False, stream: TextIO | None = None
) -> None:
    """Configure structlog (and the standard library's logging through it) once.

    ``cache=True`` (for long-running servers) lets each logger keep the configuration it
    first saw; leave it off where logging is configured more than once in a process.
    ``stream`` defaults to standard error.
    """
    out = stream or sys.stderr
    *shared, renderer = _configure_structlog(level, json=json, cache=cache, out=out)
    # the standard library's records (aiohttp, asyncio, drivers) go through the same
    # processors, redaction included
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _format_exc_info,
                _redact_exception,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp.server logs a refused request's raw request line (query string and all): errors only
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    for noisy in ("aiohttp.access", "sqlalchemy.engine", "alembic", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
