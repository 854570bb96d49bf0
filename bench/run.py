#!/usr/bin/env python
"""The performance suite: every benchmark in ``bench/``, one command, one table.

Runs, one after another (each is also a script of its own, see its docstring):

- ``ingest.py`` on SQLite and on PostgreSQL: the hub at 1 and 100 events per request next to
  the bare aiohttp ceiling and the hand-written FastAPI + SQLModel endpoint
  (``handwritten.py``), all in the same run;
- ``view.py``: 360-view latency at 10k, 100k and 1M customers;
- ``delivery.py``: value-delivery overhead (a request next to only recording its event);
- ``screenpop.py`` (when the call-center benchmark is installed): ``call.offered`` to the
  agent's screen pop;
- ``soak.py``: RSS after a 10-minute soak and its slope.

Each step's own output goes to ``--log`` (default ``bench-run.log``); the table at the end has
each figure, the baseline it is compared with (measured in the same run), the ratio, the
target and whether it is met. Figures are printed, never asserted. ``--quick`` makes every
step a smoke run (minutes, not comparable with the targets); ``--only`` picks steps.

Run ``python bench/run.py`` (about 45 minutes the first time: generating the 1M-customer view
database dominates and is cached) or ``python bench/run.py --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STEPS = ("ingest-sqlite", "ingest-postgresql", "view", "delivery", "screenpop", "soak")


@dataclass
class Row:
    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


def _step(name: str, argv: list[str], log: Any, out: Path) -> dict[str, Any] | None:
    """Run one benchmark script with ``--json out``; its output goes to the log."""
    print(f"  {name:<18} ...", end="", flush=True)
    started = time.monotonic()
    log.write(f"\n===== {name}: {' '.join(argv)}\n")
    log.flush()
    done = subprocess.run(
        [sys.executable, *argv, "--json", str(out)], stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent
    )
    took = time.monotonic() - started
    if done.returncode != 0 or not out.exists():
        print(f" FAILED after {took:.0f} s (exit {done.returncode}; see the log)", flush=True)
        return None
    print(f" {took:.0f} s", flush=True)
    return dict(json.loads(out.read_text()))


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def ingest_rows(db: str, s: dict[str, Any]) -> list[Row]:
    summary = s["summary"]
    targets = {"sqlite": 20_000.0, "postgresql": 10_000.0}
    rows = [
        Row(
            f"ingest {db}, 1 event/request",
            _fmt(summary.get("hub_1"), " ev/s"),
            "bare aiohttp " + _fmt(summary.get("bare_1"), " ev/s"),
            _fmt(summary.get("ratio_1"), "", 2),
            ">= 0.50",
            None if summary.get("ratio_1") is None else summary["ratio_1"] >= 0.5,
        ),
        Row(
            f"ingest {db}, 100 events/request",
            _fmt(summary.get("hub_100"), " ev/s"),
            "bare aiohttp " + _fmt(summary.get("bare_100"), " ev/s"),
            _fmt(summary["hub_100"] / summary["bare_100"] if summary.get("bare_100") else None, "", 2),
            f">= {targets[db]:,.0f} ev/s",
            None if summary.get("hub_100") is None else summary["hub_100"] >= targets[db],
        ),
    ]
    if summary.get("ratio_handwritten_100") is not None:
        rows.append(
            Row(
                f"ingest {db} vs hand-written, 100/req",
                _fmt(summary.get("hub_100"), " ev/s"),
                "FastAPI+SQLModel " + _fmt(summary.get("handwritten_100"), " ev/s"),
                _fmt(summary["ratio_handwritten_100"], "x", 2),
                ">= 3x",
                summary["ratio_handwritten_100"] >= 3.0,
            )
        )
    if summary.get("ratio_handwritten_1") is not None:
        rows.append(
            Row(
                f"ingest {db} vs hand-written, 1/req",
                _fmt(summary.get("hub_1"), " ev/s"),
                "FastAPI+SQLModel " + _fmt(summary.get("handwritten_1"), " ev/s"),
                _fmt(summary["ratio_handwritten_1"], "x", 2),
            )
        )
    peak = summary.get("hub_peak_rss_mb")
    rows.append(Row(f"hub peak RSS under ingest ({db})", _fmt(peak, " MB"), "", "", "<= 300 MB", peak <= 300))
    return rows


def view_rows(v: dict[str, Any]) -> list[Row]:
    rows = []
    sizes = v.get("sizes", [])
    smallest = sizes[0] if sizes else None
    for size in sizes:
        p99 = size.get("p99_ms")
        is_top = size is sizes[-1]
        rows.append(
            Row(
                f"view p99 at {size['customers']:,} customers",
                _fmt(p99, " ms", 2),
                f"{smallest['customers']:,}: {_fmt(smallest.get('p99_ms'), ' ms', 2)}" if smallest else "",
                _fmt(p99 / smallest["p99_ms"] if smallest and smallest.get("p99_ms") else None, "x", 2),
                "<= 10 ms" if is_top else "",
                (p99 <= 10.0) if is_top and p99 is not None else None,
            )
        )
    return rows


def delivery_rows(d: dict[str, Any]) -> list[Row]:
    return [
        Row(
            "value-delivery overhead p50 / p99",
            f"{d['overhead_p50_ms']:.2f} / {d['overhead_p99_ms']:.2f} ms",
            f"record only p50 {d['record_p50_ms']:.2f} ms",
            f"{d['ratio_p50']:.2f}x",
        )
    ]


def screenpop_rows(p: dict[str, Any]) -> list[Row]:
    p99 = p.get("p99_ms")
    baseline = p.get("baseline_p99_ms")
    return [
        Row(
            "screen pop (200 -> pop) p50 / p99",
            f"{_fmt(p.get('p50_ms'), '', 1)} / {_fmt(p99, ' ms', 1)}",
            "" if baseline is None else f"{p.get('baseline', 'baseline')} p99 {baseline:.1f} ms",
            _fmt(p99 / baseline if p99 and baseline else None, "x", 1),
            "<= 100 ms",
            None if p99 is None else p99 <= 100.0,
        )
    ]


def soak_rows(s: dict[str, Any]) -> list[Row]:
    return [
        Row(
            f"RSS after a {s['minutes']:g}-minute soak",
            _fmt(s["rss_end_mb"], " MB"),
            f"after start {s['rss_start_mb']:.0f} MB",
            _fmt(s["rss_end_mb"] / s["rss_start_mb"], "x", 2),
            "<= 300 MB",
            s["rss_peak_mb"] <= 300,
        ),
        Row(
            "RSS slope, second half of the soak",
            f"{s['slope_second_half_mb_per_min']:+.2f} MB/min",
            f"first half {s['slope_first_half_mb_per_min']:+.2f} MB/min",
            "",
            "<= 1 MB/min",
            s["slope_second_half_mb_per_min"] <= 1.0,
        ),
    ]


def render(rows: list[Row]) -> str:
    head = Row("figure", "value", "baseline (same run)", "ratio", "target")
    cols = [max(len(getattr(r, f)) for r in [head, *rows]) for f in ("figure", "value", "baseline", "ratio", "target")]
    lines = []
    for r in [head, *rows]:
        met = "" if r is head else {True: "met", False: "MISSED", None: ""}[r.met]
        cells = [r.figure, r.value, r.baseline, r.ratio, r.target]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, cols, strict=True)) + "  " + met)
        if r is head:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs of every step (not comparable with targets)")
    parser.add_argument("--only", default=",".join(STEPS), help=f"steps, comma-separated, of: {', '.join(STEPS)}")
    parser.add_argument("--log", default="bench-run.log", help="where each step's own output goes")
    parser.add_argument("--json", metavar="PATH", help="also write every step's figures to this JSON file")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    steps = [s for s in args.only.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    quick = ["--quick"] if args.quick else []
    ingest = [str(HERE / "ingest.py"), "--servers", "bare,hub,handwritten", *quick]
    plan: dict[str, tuple[list[str], Callable[[dict[str, Any]], list[Row]]]] = {
        "ingest-sqlite": ([*ingest, "--database", "sqlite"], lambda s: ingest_rows("sqlite", s)),
        "ingest-postgresql": ([*ingest, "--database", "postgresql"], lambda s: ingest_rows("postgresql", s)),
        "view": (
            [str(HERE / "view.py"), *(quick or ["--sizes", "10000,100000,1000000"])],
            view_rows,
        ),
        "delivery": ([str(HERE / "delivery.py"), *(["--requests", "300"] if args.quick else [])], delivery_rows),
        "screenpop": ([str(HERE / "screenpop.py"), *quick], screenpop_rows),
        "soak": (
            [str(HERE / "soak.py"), "--minutes", str(1.0 if args.quick else args.soak_minutes)],
            soak_rows,
        ),
    }
    print(
        f"prm performance suite  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cpus {os.cpu_count()}"
        f"  load avg {os.getloadavg()[0]:.2f}{'  (quick: smoke runs, not comparable with targets)' if quick else ''}",
        flush=True,
    )
    rows: list[Row] = []
    figures: dict[str, Any] = {}
    with open(args.log, "w") as log, tempfile.TemporaryDirectory(prefix="prm-bench-run-") as tmp:
        for name in steps:
            argv_, to_rows = plan[name]
            if name == "screenpop" and not (HERE / "screenpop.py").exists():
                print(f"  {name:<18} skipped: bench/screenpop.py is not installed", flush=True)
                continue
            result = _step(name, argv_, log, Path(tmp) / f"{name}.json")
            if result is None:
                rows.append(Row(name, "FAILED", "see " + args.log))
                continue
            figures[name] = result
            rows.extend(to_rows(result))
    print("\n" + render(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
