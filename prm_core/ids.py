"""Identifiers: time-ordered, URL-safe, with a prefix that says what they name."""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower-case


def new_id(prefix: str) -> str:
    """``prefix_`` + 26 characters: 48 bits of milliseconds then 80 random bits.

    Time-ordered so new rows land at the end of B-tree indexes.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return f"{prefix}_{''.join(reversed(chars))}"
