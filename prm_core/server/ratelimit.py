"""Per-key rate limits: a caller past its limit gets 429 with ``Retry-After``.

Two limits, each in the ``limits`` library's notation (several joined by ``;``, as in
``"1000/second;20000/minute"``), or ``"off"``:

- ``[server] rate_limit_public`` (default ``"20/second;600/minute"``) counts each *public*
  key per client address: a public key is in every visitor's browser, so anyone can use it,
  and one visitor's browser sends a handful of events a second at most.
- ``[server] rate_limit`` (default off) counts each *secret* key: an integrator's server, a
  store's point of sale, a partner. Set it so that one leaked or runaway key cannot take the
  hub's whole capacity; the default leaves it off so bulk loads and benchmarks are not cut.
- ``[server] rate_limit_keyless`` (default ``"20/second;600/minute"``) counts the calls of a
  route that takes no key at all (the Snowplow collector's ``tp2`` and ``/i``: trackers carry
  no secret) per route and client address, as for public keys and for the same reason.

Counting is in memory, per hub process (moving window): with several processes the
effective limit is that many times higher, which serves the purpose. Behind a proxy the
client address is the proxy's unless the proxy sets it (aiohttp's ``X-Forwarded-For``
handling is the deployment's choice).
"""

from __future__ import annotations

import math
import time

from aiohttp import web
from attrs import define, field
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ..config import Config
from ..errors import ConfigError

__all__ = [
    "DEFAULT_KEYLESS_RATE_LIMIT",
    "DEFAULT_PUBLIC_RATE_LIMIT",
    "RATE_LIMITED",
    "RATE_LIMITS",
    "REFUSALS",
    "KeyRateLimits",
    "RefusalLog",
]

DEFAULT_PUBLIC_RATE_LIMIT = "20/second;600/minute"
# what one browser's tracker sends, as for a public key
DEFAULT_KEYLESS_RATE_LIMIT = DEFAULT_PUBLIC_RATE_LIMIT


def _items(config: Config, name: str, default: str) -> list[RateLimitItem]:
    raw = config.section("server").get(name, default)
    if raw in ("off", False):
        return []
    try:
        return parse_many(str(raw))
    except ValueError:
        raise ConfigError(f"[server].{name} must look like '1000/second' or 'off', got {raw!r}") from None


@define
class KeyRateLimits:
    """The limits of secret and of public keys, counted per key (and client, for public ones),
    and of keyless routes, counted per route and client."""

    secret: list[RateLimitItem]
    public: list[RateLimitItem]
    limiter: MovingWindowRateLimiter
    keyless: list[RateLimitItem] = field(factory=list)

    @classmethod
    def from_config(cls, config: Config) -> KeyRateLimits | None:
        secret = _items(config, "rate_limit", "off")
        public = _items(config, "rate_limit_public", DEFAULT_PUBLIC_RATE_LIMIT)
        keyless = _items(config, "rate_limit_keyless", DEFAULT_KEYLESS_RATE_LIMIT)
        if not secret and not public and not keyless:
            return None
        return cls(secret, public, MovingWindowRateLimiter(MemoryStorage()), keyless)

    def retry_after(self, key_id: str, *, public: bool, client: str | None) -> int | None:
        """Count one call: None when it may go on, else the whole seconds to wait."""
        items, who = (self.public, f"{key_id}|{client}") if public else (self.secret, key_id)
        return self._hit(items, who)

    def retry_after_keyless(self, route: str, client: str | None) -> int | None:
        """Count one call of keyless ``route`` from ``client``, as :meth:`retry_after`."""
        return self._hit(self.keyless, f"keyless:{route}|{client}")

    def _hit(self, items: list[RateLimitItem], who: str) -> int | None:
        for item in items:
            if not self.limiter.hit(item, who):
                reset = self.limiter.get_window_stats(item, who).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None


@define
class RefusalLog:
    """Which 429s earn a log line: the first of each key (or route, for a 429 without a key)
    in every ``interval_s`` seconds, carrying how many were refused since the line before.

    A flood is refused thousands of times a second; a line for each would be the flood again,
    in the logs. The metric ``prm_rate_limited`` counts every one.
    """

    interval_s: float = 10.0
    _seen: dict[str, tuple[float, int]] = field(factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> RefusalLog:
        raw = config.section("server").get("rate_limit_log_s", 10)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
            raise ConfigError(f"[server].rate_limit_log_s must be a number of seconds, got {raw!r}")
        return cls(float(raw))

    def refused(self, who: str) -> int | None:
        """Count one refusal of ``who``: the refusals a log line now stands for, or None (quiet)."""
        now = time.monotonic()
        last = self._seen.get(who)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[who] = (last[0], last[1] + 1)
            return None
        if len(self._seen) > 10_000:  # bounded: made-up keys cannot grow it
            self._seen.clear()
        self._seen[who] = (now, 0)
        return 1 + (last[1] if last is not None else 0)


RATE_LIMITS = web.AppKey("prm_rate_limits", KeyRateLimits)
REFUSALS = web.AppKey("prm_refusals", RefusalLog)
# the id of the key a request was refused for (a 429's log line names it)
RATE_LIMITED = web.RequestKey("prm_rate_limited", str)
