"""Responsible information management: consent, erasure, export, retention, tombstones.

- :mod:`.consents`: consent per purpose and channel, recorded from ``consent.granted`` /
  ``consent.revoked`` events at any touch point or set by an admin, read by the 360 view.
- :mod:`.tombstones`: keyed hashes of erased identities; recording never links them again.
- :mod:`.erasure`: ``DELETE /v1/customers/{ref}``.
- :mod:`.export`: ``GET /v1/customers/{ref}/export``.
- :mod:`.retention`: ``[touchpoints.<tp>] retention_days``, purged on a schedule.
"""

from __future__ import annotations

from .consents import CONSENT_TYPES, load_consents, personalization_allowed, record_consents
from .tombstones import scrub_tombstoned

__all__ = ["CONSENT_TYPES", "load_consents", "personalization_allowed", "record_consents", "scrub_tombstoned"]
