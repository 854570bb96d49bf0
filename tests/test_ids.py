"""Identifiers: ``prefix_`` + 26 Crockford base-32 digits of 48 bits of milliseconds and 80
random bits, so ids sort by creation time."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from prm_core.ids import encode, new_id

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def reference(value: int) -> str:
    """A 128-bit value as 26 base-32 digits, most significant first, by plain division."""
    digits = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


@given(millis=st.integers(0, 2**48 - 1), random=st.binary(min_size=10, max_size=10))
def test_the_digits_are_the_time_then_the_random_bits_in_crockford_base32(millis, random):
    assert encode(millis, random) == reference(millis << 80 | int.from_bytes(random, "big"))


def test_the_extremes():
    assert encode(0, bytes(10)) == "0" * 26
    assert encode(2**48 - 1, b"\xff" * 10) == "7" + "z" * 25


def test_later_milliseconds_sort_after_earlier_ones_whatever_the_random_bits():
    made = [
        encode(ms, r)
        for ms in (1, 2, 1_700_000_000_000, 1_700_000_000_001, 2**48 - 1)
        for r in (bytes(10), b"\xff" * 10)
    ]
    assert made == sorted(made)


def test_ids_have_the_documented_shape_and_do_not_repeat():
    made = {new_id("dlg") for _ in range(1000)}
    assert len(made) == 1000
    assert all(re.fullmatch(r"dlg_[0-9a-hjkmnp-tv-z]{26}", i) for i in made)


def test_random_bytes_are_never_handed_out_twice_across_threads():
    import threading

    from prm_core.ids import random_bytes

    drawn: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [random_bytes(10) for _ in range(2000)]  # several 4 KiB draws each
        with lock:
            drawn.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(drawn) == len(set(drawn)) == 8000
    assert all(len(b) == 10 for b in drawn)
    assert len(random_bytes(10_000)) == 10_000  # more than one draw at once


def test_a_forked_child_does_not_repeat_the_parents_bytes():
    import os

    from prm_core.ids import random_bytes

    random_bytes(1)  # the parent's pool holds bytes not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, to the parent
        os.write(write, random_bytes(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != random_bytes(32)  # the parent's next bytes are its own


def test_a_child_forked_from_another_thread_does_not_repeat_that_threads_bytes():
    import os
    import threading

    from prm_core.ids import random_bytes

    seen: dict[str, bytes] = {}

    def fork_here() -> None:
        random_bytes(1)  # this thread's pool holds bytes not handed out yet
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, random_bytes(32))
            os._exit(0)
        os.close(write)
        seen["child"] = os.read(read, 32)
        os.close(read)
        os.waitpid(pid, 0)
        seen["parent"] = random_bytes(32)

    thread = threading.Thread(target=fork_here)
    thread.start()
    thread.join()
    assert len(seen["child"]) == 32
    assert seen["child"] != seen["parent"]
