"""SQLite: how a commit in one process wakes waiters in another at once.

PostgreSQL tells other processes of a commit with ``NOTIFY``; an SQLite file has no such
thing. A :class:`Doorbell` is a datagram socket named after the file (in Linux's abstract
namespace, so nothing is left on disk): a process that waits binds one of its ``slots``
names, and a process that commits rings every slot. Ringing a slot nobody holds costs one
failed ``sendto``. Elsewhere than Linux nothing is bound, and waiters fall back on looking
again every so often, as they do when every slot is taken.

The journal's processor listens on its journal's bell (one slot: one processor per SQLite
journal), and the change feed's readers in each hub process on the database's bell (a slot
per process), so a change the journal's processor records in its own process reaches a long
poll, the relay and the triggers of the server at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["Doorbell"]

MAX_MESSAGE = 2048  # a longer message is sent empty: "something happened", as the ring of old


def _queue_length() -> int:
    """How many datagrams Linux queues for a socket (``net.unix.max_dgram_qlen``, 10 unless
    set); rings past it are dropped."""
    try:
        return max(1, int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text()))
    except (OSError, ValueError):
        return 10


# a listener that finds this many queued may have missed some
QUEUED_AT_MOST = _queue_length()


class Doorbell:
    """One bell per file and ``kind``; ``slots`` processes may listen to it at once."""

    def __init__(self, path: Path, *, kind: str = "journal", slots: int = 1) -> None:
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
        base = f"\0prm-{kind}-{digest}"
        # the first slot keeps the bare name, which a journal's processor has always bound
        self.addresses = [base if k == 0 else f"{base}-{k}" for k in range(slots)]
        self.enabled = sys.platform == "linux"
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._own: str | None = None  # the slot this process listens on: not rung by its own commits

    @property
    def address(self) -> str:
        """The first slot's name."""
        return self.addresses[0]

    def ring(self, message: bytes = b"") -> None:
        """Wake every listener of another process; ``message`` (at most :data:`MAX_MESSAGE`
        bytes, else sent empty) says what happened, for listeners that care."""
        if not self.enabled:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        data = message if len(message) <= MAX_MESSAGE else b""
        for address in self.addresses:
            if address == self._own:
                continue
            try:
                self._sender.sendto(data, address)
            except OSError:  # nobody listening there, or its queue full (it wakes anyway)
                pass

    def listen(self, on_ring: Callable[[list[bytes]], None]) -> bool:
        """Bind the first free slot and call ``on_ring`` (in the running loop) with the
        messages queued whenever the bell rings (ending with an empty one when rings may
        have been dropped); false when every slot is taken or the platform has no such
        socket."""
        if not self.enabled:
            return False
        for address in self.addresses:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                continue
            break
        else:
            return False
        sock.setblocking(False)

        def rung() -> None:
            messages: list[bytes] = []
            try:
                while True:  # every ring queued: one wake-up is enough
                    messages.append(sock.recv(MAX_MESSAGE + 1))
            except OSError:  # drained
                pass
            if not messages or len(messages) >= QUEUED_AT_MOST:
                messages.append(b"")  # rings may have been dropped, or not read: what they said is unknown
            on_ring(messages)

        asyncio.get_running_loop().add_reader(sock.fileno(), rung)
        self._listener, self._own = sock, address
        return True

    def close(self) -> None:
        if self._listener is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            except RuntimeError:  # no loop running any more: nothing reads it
                pass
            self._listener.close()
            self._listener, self._own = None, None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
