"""Per-key rate limits: a key past its limit gets 429 with ``Retry-After``.

``[server] rate_limit`` is a rate in the ``limits`` library's notation, several separated
by ``;`` (``"1000/second;20000/minute"``); ``"off"`` turns it off. The default is generous
(a busy store's point of sale or a tracker behind a CDN stays far below it) and is there so
that one leaked or runaway key cannot take the hub's whole capacity. Counting is per hub
process (moving window, in memory): with several processes the effective limit is that
many times higher, which is fine for its purpose.
"""

from __future__ import annotations

import math
import time

from aiohttp import web
from attrs import define
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ..config import Config
from ..errors import ConfigError

__all__ = ["DEFAULT_RATE_LIMIT", "RATE_LIMITS", "KeyRateLimits"]

DEFAULT_RATE_LIMIT = "1000/second"


@define
class KeyRateLimits:
    """The limits every key shares, each counted per key."""

    items: list[RateLimitItem]
    limiter: MovingWindowRateLimiter

    @classmethod
    def from_config(cls, config: Config) -> KeyRateLimits | None:
        raw = config.section("server").get("rate_limit", DEFAULT_RATE_LIMIT)
        if raw in ("off", False):
            return None
        try:
            items = parse_many(str(raw))
        except ValueError:
            raise ConfigError(f"[server].rate_limit must look like '1000/second' or 'off', got {raw!r}") from None
        return cls(items, MovingWindowRateLimiter(MemoryStorage()))

    def retry_after(self, key_id: str) -> int | None:
        """Count one call by ``key_id``: None when it may go on, else the seconds to wait."""
        for item in self.items:
            if not self.limiter.hit(item, key_id):
                reset = self.limiter.get_window_stats(item, key_id).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None


RATE_LIMITS = web.AppKey("prm_rate_limits", KeyRateLimits)
