"""Hub processes for the tests that start ``prm serve`` for real: crashes, several hubs.

``linking_event(n)`` is event ``n`` of a stream about ``PERSONS`` people whose anonymous
devices log in now and then (so identities link and customers merge); ``drive`` sends such
events in batches until told to stop, each batch again until it is acknowledged;
``assert_consistent`` checks, straight in the database, what must hold after any of it.

``start_hub`` and ``cli`` run ``prm`` commands as processes of their own, forked from a
launcher process that imported the hub once (see :class:`Launcher`): a crash test starts the
hub a dozen times, and each start would otherwise spend seconds importing the same modules.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import IO, Any

import aiohttp
import sqlalchemy as sa

from prm_core.store.engine import async_url

PERSONS = 40
PER_BATCH = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    """Run ``prm ARGS`` in a process of its own; the last line it printed."""
    with tempfile.TemporaryDirectory(prefix="prm-cli-") as out:
        stdout, stderr = Path(out, "stdout"), Path(out, "stderr")
        proc = launch(list(args), env=env, cwd=cwd, stdout=stdout, stderr=stderr)
        try:
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert code == 0, stderr.read_text()
        return stdout.read_text().strip().splitlines()[-1]


def linking_event(n: int) -> dict[str, Any]:
    """Event ``n`` of person ``n % PERSONS``: a few anonymous devices that log in now and then."""
    person, visit = n % PERSONS, n // PERSONS
    identities = {"anonymous_id": f"device-{person}-{visit % 3}"}
    if visit % 4 == 0:
        identities["user_id"] = f"user-{person}"
    if visit % 7 == 1:
        identities["email"] = f"person{person}@example.com"
    revenue = {"revenue": "10.00"} if n % 5 == 0 else {}
    return {
        "id": f"ev-{n}",
        "type": "order.completed" if revenue else "page.viewed",
        "occurred_at": f"2026-11-23T10:{(n // 60) % 60:02d}:{n % 60:02d}Z",
        "identities": identities,
        "data": revenue,
    }


async def drive(
    ports: list[int],
    key: str,
    acked: set[str],
    stop: asyncio.Event,
    *,
    workers: int = 4,
    limit: int | None = None,
    positions: dict[int, int] | None = None,
) -> int:
    """Send batches until ``stop`` (or ``limit`` batches), each until it is acknowledged; return
    how many events were sent; ``positions`` gets, per port, the latest journal position an
    answer from there carried. Worker ``i``
    sends to ``ports[i % len(ports)]``, so with several hubs the same people's identities arrive
    at different processes at once.

    Connection errors and 503s mean the hub is down or recovering: the same batch is sent again.
    """
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=10)
    next_batch = 0

    async def worker(port: int) -> None:
        nonlocal next_batch
        url = f"http://127.0.0.1:{port}/v1/touchpoints/web/events"
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set() and (limit is None or next_batch < limit):
                b, next_batch = next_batch, next_batch + 1
                batch = [linking_event(b * PER_BATCH + i) for i in range(PER_BATCH)]
                while True:
                    try:
                        async with session.post(url, json={"events": batch}, headers=headers) as resp:
                            if resp.status == 200:
                                acked.update(e["id"] for e in batch)
                                answer = await resp.json()
                                if positions is not None and "position" in answer:
                                    positions[port] = max(positions.get(port, 0), int(answer["position"]))
                                break
                            # 503 while the database recovers is expected; anything else is a bug
                            assert resp.status == 503, (resp.status, await resp.text())
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(workers)))
    return next_batch * PER_BATCH


async def processed(port: int, position: int) -> None:
    """Wait until the journal is processed past ``position``, as the hub on ``port`` reports
    it (``/healthz``); at once without the journal. A hub reads the processor's place only while
    the events it journaled itself are not all processed: ``position`` must be one that hub
    answered, not another hub's."""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                journal = (await resp.json()).get("journal")
            if journal is None or int(journal["processed"]) >= position:
                return
            await asyncio.sleep(0.05)


def start_hub(database_url: str, port: int, env: dict[str, str], cwd: Path) -> HubProcess:
    args = ["serve", "--port", str(port), "--database", database_url, "--log-level", "warning"]
    return launch(args, env=env, cwd=cwd)


async def wait_up(port: int, proc: HubProcess) -> None:
    async with aiohttp.ClientSession() as session:
        # a minute: three hubs migrating and starting at once on a busy 2-core machine took over 15 s
        for _ in range(1200):
            assert proc.poll() is None, "the hub exited on start"
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the hub did not come up within a minute")


async def assert_consistent(database_url: str, total: int) -> None:
    """The invariants, read straight from the database after the last round."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_consistent, total)
    finally:
        await engine.dispose()


def _consistent(conn: sa.Connection, total: int) -> None:
    rows = conn.execute(sa.text("SELECT event_id, count(*) FROM events WHERE touchpoint = 'web' GROUP BY event_id"))
    counts = dict(rows.all())
    assert len(counts) == total, f"{total - len(counts)} acknowledged events are missing"
    assert set(counts.values()) == {1}, "an event is stored twice"

    live = dict(conn.execute(sa.text("SELECT id, merged_into FROM customers")).all())

    def follow(cid: str) -> str:
        seen = set()
        while live.get(cid) is not None:
            assert cid not in seen, "a merge cycle"
            seen.add(cid)
            cid = live[cid]
        return cid

    orphans = conn.execute(
        sa.text("SELECT count(*) FROM events e LEFT JOIN dialogues d ON d.id = e.dialogue_id WHERE d.id IS NULL")
    ).scalar_one()
    assert orphans == 0, "events whose dialogue does not exist"
    for ev_customer, dlg_customer in conn.execute(
        sa.text("SELECT e.customer_id, d.customer_id FROM events e JOIN dialogues d ON d.id = e.dialogue_id")
    ):
        assert follow(ev_customer) == follow(dlg_customer), "an event and its dialogue belong to different customers"
    for ev_customer in conn.execute(sa.text("SELECT DISTINCT customer_id FROM events")).scalars():
        assert live[ev_customer] is None, "an event points at a merged-away customer"

    per_person = {}
    for namespace, value, cid in conn.execute(sa.text("SELECT namespace, value, customer_id FROM identities")):
        if namespace == "user_id":
            per_person[value] = follow(cid)
    assert len(per_person) == PERSONS
    assert len(set(per_person.values())) == PERSONS, "two people share a customer"

    counted = conn.execute(
        sa.text(
            "SELECT coalesce(sum(m.event_count), 0) FROM customer_metrics m "
            "JOIN customers c ON c.id = m.customer_id WHERE c.merged_into IS NULL"
        )
    ).scalar_one()
    assert counted == total, f"metrics count {counted} events, the log holds {total}"
    revenue = conn.execute(
        sa.text(
            "SELECT coalesce(sum(m.lifetime_revenue), 0) FROM customer_metrics m "
            "JOIN customers c ON c.id = m.customer_id WHERE c.merged_into IS NULL"
        )
    ).scalar_one()
    assert float(revenue) == 10.0 * len([n for n in range(total) if n % 5 == 0])


# ---- the launcher: `prm` processes forked from one that imported the hub once -------------


class HubProcess:
    """A ``prm`` process the launcher forked: what the tests use of :class:`subprocess.Popen`."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _exit(self, returncode: int) -> None:
        self.returncode = returncode
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # not a pid some other process may have by now
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """A process that imports the hub once, then forks one ``prm`` command per request.

    Each child is a process of its own running ``prm_core.cli.main`` (killed by SIGKILL like
    any other, its database connections and sockets its own); only the imports were done
    before the fork. The launcher reports each child's pid, and its exit status when it
    exits (it is their parent: the test process cannot wait for them itself). When the test
    process goes away, the launcher kills what it started and exits.
    """

    def __init__(self) -> None:
        # the hub's modules are imported with no PRM_* setting in the environment, as they are
        # by a fresh `prm` process of a crash test; each command then gets the env it asked for
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import hubprocs; hubprocs.serve_launches()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin: IO[bytes] = self._proc.stdin
        self._started: queue.Queue[HubProcess | BaseException] = queue.Queue()
        self._children: dict[int, HubProcess] = {}
        self._lock = threading.Lock()
        self._pending: list[list[str]] = []
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[bytes]) -> None:
        try:
            for line in stdout:
                message = json.loads(line)
                if "started" in message:
                    child = self._children[message["started"]] = HubProcess(message["started"], self._pending.pop(0))
                    self._started.put(child)
                elif "exited" in message:
                    self._children.pop(message["exited"])._exit(message["returncode"])
        except BaseException as exc:  # a broken launcher fails the test that waits on it
            self._started.put(exc)
            raise
        self._started.put(RuntimeError("the hub launcher exited"))

    def launch(
        self, args: list[str], *, env: dict[str, str], cwd: Path, stdout: Path | None, stderr: Path | None
    ) -> HubProcess:
        request = {"args": args, "env": env, "cwd": str(cwd), "stdout": stdout, "stderr": stderr}
        with self._lock:
            self._pending.append(args)
            self._stdin.write(json.dumps(request, default=str).encode() + b"\n")
            self._stdin.flush()
            started = self._started.get(timeout=60)
        if isinstance(started, BaseException):
            raise started
        return started

    def close(self) -> None:
        self._stdin.close()  # the launcher kills its children and exits
        self._proc.wait(timeout=30)


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()


def launch(
    args: list[str], *, env: dict[str, str], cwd: Path, stdout: Path | None = None, stderr: Path | None = None
) -> HubProcess:
    """Start ``prm ARGS`` as a process of its own (output to the given files, else discarded)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            import atexit

            _launcher = Launcher()
            atexit.register(_launcher.close)
    return _launcher.launch(args, env=env, cwd=cwd, stdout=stdout, stderr=stderr)


def serve_launches() -> None:
    """The launcher's side: import the hub, then fork a ``prm`` command per line of stdin."""
    import importlib.metadata

    import prm_core.cli
    import prm_core.server.app  # what `prm serve` imports on start

    for group in ("prm", "prm.commands"):
        for ep in importlib.metadata.entry_points(group=group):
            ep.load()
    # a fork copies only the thread calling it: a thread an import started would be lost
    assert threading.active_count() == 1, threading.enumerate()

    report = sys.stdout.buffer
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: set[int] = set()
    buffered = b""

    def reap() -> None:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            children.discard(pid)
            report.write(json.dumps({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            report.flush()

    while True:
        try:
            ready, _, _ = select.select([0, wakeup_r], [], [])
        except InterruptedError:
            continue
        if wakeup_r in ready:
            os.read(wakeup_r, 4096)
            reap()
        if 0 not in ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the test process is gone: so is everything it started
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for _ in itertools.repeat(None, len(children)):
                os.wait()
            return
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            request = json.loads(line)
            report.flush()
            pid = os.fork()
            if pid == 0:
                _run_child(request, prm_core.cli.main, (wakeup_r, wakeup_w))
            children.add(pid)
            report.write(json.dumps({"started": pid}).encode() + b"\n")
            report.flush()
        reap()


def _run_child(request: dict[str, Any], main: Any, launcher_fds: tuple[int, int]) -> None:
    code: Any = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in launcher_fds:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # what a fresh process finds on its PYTHONPATH (a test's own plugin distribution), ahead
        # of the launcher's path as the interpreter would put it
        for entry in reversed(request["env"].get("PYTHONPATH", "").split(os.pathsep)):
            if entry and entry not in sys.path:
                sys.path.insert(1, entry)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if path else null
            os.dup2(target, fd)
        sys.argv = ["prm", *request["args"]]
        main(args=request["args"], prog_name="prm")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
