"""Identifiers: time-ordered, URL-safe, with a prefix that says what they name."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id", "random_bytes"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower-case
# every 10-bit value as its two digits
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def new_id(prefix: str) -> str:
    """``prefix_`` + 26 characters: 48 bits of milliseconds then 80 random bits.

    Time-ordered so new rows land at the end of B-tree indexes.
    """
    return f"{prefix}_{encode(time.time_ns() // 1_000_000, random_bytes(10))}"


_DRAW = 4096  # bytes per call to os.urandom


class _Pool(threading.local):
    """One thread's bytes from ``os.urandom`` not handed out yet (empty until first drawn)."""

    data = b""
    at = 0


_pool = _Pool()
# a forked child (only the forking thread lives on in it) empties that thread's pool, looked
# up in the child: it must not hand out the bytes its parent will
os.register_at_fork(after_in_child=lambda: vars(_pool).clear())


def random_bytes(n: int) -> bytes:
    """``n`` bytes of ``os.urandom``, drawn 4 KiB at a time, each handed out once.

    ``os.urandom`` lets go of the interpreter lock for its system call, and getting it back
    costs a thread switch whenever the writer or a reader thread is busy (a quarter of a
    millisecond on the event loop under the profiler, several times a request). Drawn in
    bulk, that switch happens once per 400 ids.
    Per thread and reset in a forked child, so no two callers ever get the same bytes.
    """
    pool = _pool
    if pool.at + n > len(pool.data):
        pool.data, pool.at = os.urandom(max(_DRAW, n)), 0
    start = pool.at
    pool.at = start + n
    return pool.data[start : start + n]


def encode(millis: int, random: bytes) -> str:
    """The 26 base-32 digits of ``millis`` (48 bits) followed by ``random`` (80 bits)."""
    v = millis << 80 | int.from_bytes(random, "big")
    # 10 bits (two digits) at a time from a table, in one expression: cheaper than
    # base64.b32encode (Python code looping over 5-byte groups) and a translation to Crockford's
    # digits (the ingest writer makes an id per new customer and dialogue)
    p = _PAIRS
    return (
        p[v >> 120] + p[v >> 110 & 1023] + p[v >> 100 & 1023] + p[v >> 90 & 1023] + p[v >> 80 & 1023]
        + p[v >> 70 & 1023] + p[v >> 60 & 1023] + p[v >> 50 & 1023] + p[v >> 40 & 1023]
        + p[v >> 30 & 1023] + p[v >> 20 & 1023] + p[v >> 10 & 1023] + p[v & 1023]
    )  # fmt: skip
