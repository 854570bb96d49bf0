"""The TM Forum v4.0.0 definitions the partner tests check messages against.

tests/data holds, for TMF646 Appointment Management v4.0.0 (from
TMF646-Appointment-v4.0.0.swagger.json) and TMF687 Stock Management v4.0.0 (from
TMF687-Stock-v4.0.0.swagger.json, both published by TM Forum under Apache-2.0), the
definitions the hub sends or reads and everything they refer to, copied as published with
their descriptions removed:

- TMF646: Appointment_Create, Appointment, SearchTimeSlot_Create, SearchTimeSlot, the
  Appointment and SearchTimeSlot Create/AttributeValueChange/StateChange/Delete events;
- TMF687: CheckProductStock_Create, CheckProductStock, ReserveProductStock_Create,
  ReserveProductStock, their Create/AttributeValueChange/StateChange/Batch events;
- both: EventSubscriptionInput, EventSubscription, Error.

A swagger 2.0 definition is a JSON Schema (draft 4) document; the ``jsonschema`` library
checks required fields, types and enums.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jsonschema

__all__ = ["SPECS", "assert_conforms", "spec", "violations"]

DATA = os.path.join(os.path.dirname(__file__), "data")
SPECS = {
    "tmf646": "TMF646-Appointment-v4.0.0.schema.json",
    "tmf687": "TMF687-Stock-v4.0.0.schema.json",
}


def spec(protocol: str) -> dict[str, Any]:
    with open(os.path.join(DATA, SPECS[protocol])) as f:
        return dict(json.load(f))


def violations(protocol: str, definition: str, message: Any) -> list[str]:
    """What ``message`` breaks of ``definition`` (a swagger 2.0 definition: JSON Schema draft 4)."""
    doc = spec(protocol)
    assert definition in doc["definitions"], definition
    validator = jsonschema.Draft4Validator({"$ref": f"#/definitions/{definition}", "definitions": doc["definitions"]})
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(message)]


def assert_conforms(protocol: str, definition: str, message: Any) -> None:
    assert violations(protocol, definition, message) == [], (definition, message)
