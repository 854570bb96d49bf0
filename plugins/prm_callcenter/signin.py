"""Agent sign-in without API keys: a one-time code, then a short-lived session for one agent.

A supervisor's tool or the CTI (a key with scope ``touchpoint:callcenter``, or ``admin``)
asks ``POST /v1/agents/{agent_id}/signin`` for a code and hands the agent the link it comes
with (``agent#code=...``); the page trades the code once at ``POST /v1/agents/session`` for a
session token. The token opens only that agent's screen pops and records only that agent's
notes and outcomes: it is not a key, cannot read a customer, and ends on sign-out or after
``session_ttl_s`` (8 hours by default). A key of any other scope gets no code, so a ``read``
key never signs an agent in.

Codes and sessions live in the process that issued them (as screen-pop tickets do): behind
several hub processes, route ``/v1/agents/`` to one of them, or sign in again after a restart.
Only SHA-256 digests of codes and tokens are kept.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from attrs import define, field

__all__ = ["AgentSessions"]

MAX_PENDING = 10_000


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@define(eq=False)
class AgentSessions:
    """One-time sign-in codes and the agent sessions they open (in memory, bounded)."""

    code_ttl_s: float = 600.0
    session_ttl_s: float = 8 * 3600.0
    _codes: dict[str, tuple[str, float]] = field(factory=dict)
    _sessions: dict[str, tuple[str, float]] = field(factory=dict)

    @staticmethod
    def _prune(table: dict[str, tuple[str, float]], now: float) -> None:
        for key, (_, expires) in list(table.items()):
            if expires < now:
                del table[key]
        if len(table) >= MAX_PENDING:
            raise OverflowError("too many sign-ins waiting")

    def issue_code(self, agent: str) -> str:
        """A code that signs ``agent`` in once within ``code_ttl_s``."""
        now = time.monotonic()
        self._prune(self._codes, now)
        code = secrets.token_urlsafe(24)
        self._codes[_digest(code)] = (agent, now + self.code_ttl_s)
        return code

    def redeem(self, code: str) -> tuple[str, str] | None:
        """``(token, agent)`` for a live code (which is used up), else ``None``."""
        found = self._codes.pop(_digest(code), None)
        now = time.monotonic()
        if found is None or found[1] < now:
            return None
        self._prune(self._sessions, now)
        token = "agent_" + secrets.token_urlsafe(32)
        self._sessions[_digest(token)] = (found[0], now + self.session_ttl_s)
        return token, found[0]

    def agent_of(self, token: str) -> str | None:
        """The agent a live session token belongs to."""
        found = self._sessions.get(_digest(token))
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def end(self, token: str) -> bool:
        """Sign out: the token stops working at once."""
        return self._sessions.pop(_digest(token), None) is not None
