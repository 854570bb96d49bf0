"""Writing one email from a trigger's message: templates, parts and headers.

**Templates** (Jinja2) live in ``[touchpoints.email] templates``, one directory per locale::

    templates/en/welcome.txt        the text part
    templates/en/welcome.html       the HTML part (autoescaped)
    templates/en/welcome.subject    the subject line (optional)
    templates/fr/welcome.txt

The template's name is ``message.data["template"]`` when set, else the trigger's name. The
locale is the customer's ``locale`` trait (``fr-CA``, then ``fr``), then
``[touchpoints.email] default_locale``. A template sees ``first_name``, ``text`` (the trigger's own
text, filled in), ``subject``, ``trigger``, ``locale`` and ``unsubscribe_url``. Without a
template the trigger's text is the text part, and the same text, escaped, the HTML part.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from prm_core.plugin import Message, utcnow

from .settings import LOCALE, EmailSettings
from .signing import message_id, unsubscribe_token

__all__ = ["TemplateFailed", "Templates", "compose", "unsubscribe_link"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LINES = re.compile(r"[\r\n]+")


class TemplateFailed(Exception):
    """A template that cannot be rendered (a syntax error, a name it does not know): the
    message fails with this reason, since sending it again would fail the same way."""


class Templates:
    """The templates of one ``[touchpoints.email] templates`` directory (read once, then cached)."""

    def __init__(self, settings: EmailSettings) -> None:
        self.default_locale = settings.default_locale
        self.env: ImmutableSandboxedEnvironment | None = None
        if settings.templates is not None:
            self.env = ImmutableSandboxedEnvironment(
                loader=FileSystemLoader(settings.templates),
                autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
                undefined=StrictUndefined,
                keep_trailing_newline=True,
            )

    def locales(self, locale: str | None) -> list[str]:
        """Where to look, in order: ``fr-CA``, ``fr``, the default locale."""
        found: list[str] = []
        if locale and LOCALE.match(locale):
            tag = locale.replace("_", "-")
            found += [tag, tag.split("-")[0]]
        found.append(self.default_locale)
        return list(dict.fromkeys(found))

    def render(self, name: str, locale: str | None, values: Mapping[str, Any]) -> dict[str, str] | None:
        """``{"text", "html"?, "subject"?}`` of template ``name`` in the first locale that has
        its text or HTML part, or ``None`` when none does."""
        if self.env is None or not _NAME.match(name):
            return None
        for where in self.locales(locale):
            parts: dict[str, str] = {}
            for kind in ("txt", "html", "subject"):
                path = f"{where}/{name}.{kind}"
                try:
                    parts[kind] = self.env.get_template(path).render(**values)
                except TemplateNotFound as exc:
                    if exc.name != path:  # one it includes is missing
                        raise TemplateFailed(f"the email template {path} includes a missing one") from None
                except TemplateError as exc:
                    raise TemplateFailed(f"the email template {path} cannot be rendered: {exc.message}"[:300]) from None
            if "txt" in parts or "html" in parts:
                return parts
        return None


def unsubscribe_link(settings: EmailSettings, customer_id: str) -> str | None:
    if settings.unsubscribe_url is None:
        return None
    return f"{settings.unsubscribe_url}/{unsubscribe_token(settings.secret, customer_id)}"


def _one_line(text: str, limit: int = 200) -> str:
    return _LINES.sub(" ", text).strip()[:limit]


def _as_html(text: str, lang: str) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    body = "\n".join("<p>" + html.escape(p).replace("\n", "<br>\n") + "</p>" for p in paragraphs)
    head = '<head><meta charset="utf-8"></head>'
    return f'<!doctype html>\n<html lang="{html.escape(lang)}">{head}<body>\n{body}\n</body></html>\n'


def compose(message: Message, to: str, settings: EmailSettings, templates: Templates) -> EmailMessage:
    """The email of ``message`` to the address ``to`` (normalized): its Message-ID derives
    from ``message.id``, so the same message composed again has the same one."""
    marketing = message.purpose == "marketing"
    unsubscribe = unsubscribe_link(settings, message.customer_id) if marketing else None
    values = {
        "first_name": message.first_name or "",
        "text": message.text,
        "subject": message.subject or "",
        "trigger": message.trigger,
        "locale": message.locale or settings.default_locale,
        "unsubscribe_url": unsubscribe or "",
    }
    name = message.data.get("template") or message.trigger
    rendered = templates.render(str(name), message.locale, values)
    if rendered is None:
        text = message.text.rstrip() + "\n"
        if unsubscribe:
            text += f"\n--\nUnsubscribe: {unsubscribe}\n"
        lang = message.locale if message.locale and LOCALE.match(message.locale) else settings.default_locale
        parts = {"txt": text, "html": _as_html(text, lang.replace("_", "-"))}
    else:
        parts = rendered
    subject = _one_line(parts.get("subject") or message.subject or message.text.split("\n", 1)[0], 200)

    email = EmailMessage()
    email["Message-ID"] = message_id(settings.secret, settings.domain, message.id, to)
    email["Date"] = format_datetime(utcnow())
    email["From"] = settings.sender
    email["To"] = to
    email["Subject"] = subject
    if settings.reply_to:
        email["Reply-To"] = settings.reply_to
    if unsubscribe:
        # RFC 2369 and RFC 8058: mail clients show an unsubscribe button that POSTs to it
        email["List-Unsubscribe"] = f"<{unsubscribe}>"
        email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if "txt" in parts:
        email.set_content(parts["txt"], subtype="plain", charset="utf-8")
        if "html" in parts:
            email.add_alternative(parts["html"], subtype="html", charset="utf-8")
    else:
        email.set_content(parts["html"], subtype="html", charset="utf-8")
    return email
