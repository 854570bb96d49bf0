#!/usr/bin/env python
"""What an idle hub costs: CPU per second of ``prm serve`` (and its journal processors) with
no traffic at all.

Starts ``prm serve`` on a fresh SQLite file (or PostgreSQL database, ``--database-url``) in
each of these set-ups, lets it settle, and reads the CPU time of the server and of each
``prm process`` child from ``/proc`` over ``--seconds``:

- ``direct``: ``[ingest] journal = false``, events recorded while the sender waits (the baseline);
- ``journal, processor in the server``: ``journal = true``, ``--processors 0``;
- ``journal, 1 processor``: ``journal = true``, ``--processors 1`` (the default).

Printed: milliseconds of CPU per second for the server, the processors and both, and each
set-up's total as a ratio of the baseline measured in the same run. A hub that waits for
work should cost next to nothing: its readers and its processor wake on work, not on a
clock. Timing is never asserted.

Run ``python bench/idle.py`` (about a minute) or ``python bench/idle.py --seconds 30``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import cpu_seconds, free_port
from soak import children

SETUPS = (
    ("direct (baseline)", "[ingest]\njournal = false\n", 0),
    ("journal, processor in the server", "[ingest]\njournal = true\n", 0),
    ("journal, 1 processor", "[ingest]\njournal = true\n", 1),
)


def wait_healthy(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def measure(database_url: str, config_text: str, processors: int, seconds: float, settle: float) -> tuple[float, float]:
    """(server, processors): ms of CPU per second over ``seconds`` of idleness."""
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-idle-"))
    config = workdir / "prm.toml"
    config.write_text(config_text)
    url = database_url or f"sqlite:///{workdir}/prm.db"
    env = {**os.environ, "PRM_DATABASE_URL": url, "PRM_CONFIG": str(config)}
    port = free_port()
    args = [sys.executable, "-m", "prm_core.cli", "serve", "--port", str(port), "--log-level", "warning"]
    args += ["--processors", str(processors)]
    hub = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)
        time.sleep(settle)
        kids = children(hub.pid)
        before = cpu_seconds(hub.pid), sum(cpu_seconds(k) for k in kids)
        time.sleep(seconds)
        after = cpu_seconds(hub.pid), sum(cpu_seconds(k) for k in kids)
        return 1000 * (after[0] - before[0]) / seconds, 1000 * (after[1] - before[1]) / seconds
    finally:
        hub.terminate()
        hub.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each set-up is measured")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after start before measuring")
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file per set-up")
    args = parser.parse_args(argv)
    print(
        f"prm idle benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cpus {os.cpu_count()}"
        f"  load avg {os.getloadavg()[0]:.2f}  {args.seconds:g} s each",
        flush=True,
    )
    baseline = 0.0
    for name, config_text, processors in SETUPS:
        server, procs = measure(args.database_url, config_text, processors, args.seconds, args.settle)
        total = server + procs
        baseline = baseline or total
        print(
            f"{name:34} server {server:6.1f} ms/s  processors {procs:6.1f} ms/s  total {total:6.1f} ms/s"
            f"  {total / baseline if baseline else float('nan'):5.2f}x the baseline",
            flush=True,
        )


if __name__ == "__main__":
    main()
