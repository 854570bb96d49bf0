"""Household buying: customers sharing an address or a household phone, grouped.

A household is a group customer (``kind="group"``) owning one identity in the
``household`` namespace, joined through :meth:`prm_core.hub.Hub.join_group`:

- ``household:phone-<digest>`` when a transaction's ``customer_ref.phone`` is a *shared*
  identity (marked with ``PUT /v1/identities/phone:... {"shared": true}``, or the ``phone``
  namespace listed in ``[identity] shared_namespaces``). A phone that is not shared is a
  person's own and groups nobody: two people on one personal phone are one customer;
- ``household:addr-<digest>`` for ``customer_ref.address`` (``line1``, ``line2``, ``city``,
  ``postal_code``, ``country``), normalized (case, spacing, punctuation) before hashing.

The identity values are digests, so a household's identity does not spell out a phone
number or where anyone lives, and the address itself is not stored. A digest is
pseudonymous, not secret: whoever holds a candidate address or number can compute it and
compare, so household identities are treated as personal data like any other identity. The household's 360 view sums its
members' metrics (the core's group view): what the household buys together.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

from prm_core.plugin import Hub, Identity, IdentityNamespace

__all__ = ["NAMESPACE", "address_key", "join_households", "namespace"]

NAMESPACE = "household"
_ADDRESS_PARTS = ("line1", "line2", "city", "postal_code", "country")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _keep(raw: str, region: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("is empty")
    return value


def namespace() -> IdentityNamespace:
    return IdentityNamespace(NAMESPACE, _keep, description="a household (digest of a shared phone or an address)")


def address_key(address: Mapping[str, str]) -> str | None:
    """``addr-<digest>`` of a normalized address, or ``None`` when it has no first line."""
    parts = []
    for part in _ADDRESS_PARTS:
        value = re.sub(r"[^\w]+", " ", str(address.get(part, "")).casefold()).strip()
        parts.append(re.sub(r"\s+", " ", value))
    if not parts[0]:
        return None
    return "addr-" + _digest("|".join(parts))


async def join_households(
    hub: Hub, customer_id: str, seen: Sequence[Identity], address: Mapping[str, str] | None
) -> list[str]:
    """Make the customer a member of the households its shared phone and address name;
    returns the households' customer ids."""
    keys = []
    phones = [i for i in seen if i.namespace == "phone"]
    if phones:
        keys += ["phone-" + _digest(p.value) for p in await hub.shared_identities(phones)]
    if address:
        key = address_key(address)
        if key:
            keys.append(key)
    return [
        await hub.join_group(
            customer_id, Identity(NAMESPACE, key), kind="group", traits={"name": "Household", "household": True}
        )
        for key in keys
    ]
