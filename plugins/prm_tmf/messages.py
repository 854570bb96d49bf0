"""What TM Forum v4 messages share: the notification envelope, spec errors, reading helpers.

A TM Forum v4 notification is ``{"eventId", "eventTime", "eventType", "event": {<resource>:
{...}}}``; every field of the envelope is optional in the specifications, ``eventType``
included, so the event is named by ``eventType``, else by the listener path it was posted
to (``/listener/appointmentStateChangeEvent``), else by the resource it carries (a state
change). ``@type``, ``@baseType`` and ``@schemaLocation`` may appear on any resource and are
ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

__all__ = ["EVENT_KINDS", "InvalidMessage", "Notification", "event_name", "mapping", "text"]

# the kinds of notification each resource has (TMF646 and TMF687 v4.0.0 definitions)
EVENT_KINDS = ("CreateEvent", "AttributeValueChangeEvent", "StateChangeEvent", "DeleteEvent", "BatchEvent")


class InvalidMessage(ValueError):
    """A partner's answer or notification that breaks its TM Forum definition: ``field`` is
    the dotted path of the offending field (``event.appointment.status``), ``ref`` the request
    it names when that could be read (so the request can be marked for attention)."""

    def __init__(self, field: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.ref = ref


@frozen
class Notification:
    """A TM Forum notification as the hub applies it.

    ``status`` is the hub's status for the request, ``None`` when the event changes no
    status (an attribute change without one: the request keeps its own). ``ignored``: an
    event type the hub does not act on (recorded in the log, answered, never applied).
    """

    event_type: str
    ref: str | None
    status: str | None
    data: Mapping[str, Any]
    ignored: bool = False


def mapping(value: Any, field: str, ref: str | None = None) -> Mapping[str, Any]:
    """``value`` if it is a JSON object; absent is an empty one; anything else is invalid."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidMessage(field, f"{field} must be an object", ref)
    return value


def text(value: Any, field: str, ref: str | None = None) -> str | None:
    """``value`` if it is a non-empty string; absent is ``None``; anything else is invalid."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidMessage(field, f"{field} must be a string", ref)
    return value


def event_name(body: Mapping[str, Any], listener: str | None, resources: Mapping[str, str]) -> tuple[str, str]:
    """``(eventType, resource key)`` of a notification.

    ``resources`` maps a resource key of ``event`` (``appointment``) to its type name
    (``Appointment``). The type comes from ``eventType``, else from the ``listener`` path's
    last part (``appointmentDeleteEvent``), else it is the resource's ``StateChangeEvent``.
    A ``listener`` and an ``eventType`` that disagree are invalid.
    """
    declared = text(body.get("eventType"), "eventType")
    from_path = listener[0].upper() + listener[1:] if listener else None
    if declared and from_path and declared != from_path:
        raise InvalidMessage("eventType", f"eventType names another event than the listener of {from_path}")
    event = mapping(body.get("event"), "event")
    present = [key for key in resources if key in event]
    name = declared or from_path
    if name is None:
        if not present:
            raise InvalidMessage("event", f"event must hold one of {', '.join(resources)}")
        return resources[present[0]] + "StateChangeEvent", present[0]
    for key, type_name in resources.items():
        if name.startswith(type_name) and name[len(type_name) :] in EVENT_KINDS:
            return name, key
    return name, ""
