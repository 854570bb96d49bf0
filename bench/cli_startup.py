"""How long ``prm --help`` takes, next to starting the interpreter alone, in the same run.

``prm --help`` lists every command, the ones installed distributions add through the
``prm.commands`` entry points included (``prm demo``); it must not import what those commands
use (the demo, the vendor SDKs, scipy). Each command runs ``--rounds`` times, in turn, in a new
process, and the median wall time of each is printed with its ratio to ``python -c pass``::

    python bench/cli_startup.py              # 7 rounds
    python bench/cli_startup.py --rounds 21

Target: ``prm --help`` under 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 1.0


def _prm() -> list[str]:
    """The ``prm`` script installed next to this interpreter (what a user runs), else the module."""
    script = Path(sys.executable).parent / "prm"
    found = str(script) if script.exists() else shutil.which("prm")
    return [found] if found else [sys.executable, "-m", "prm_core.cli"]


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command (the median is printed)")
    args = parser.parse_args()
    prm = _prm()
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "prm --version": [*prm, "--version"],
        "prm --help": [*prm, "--help"],
        "prm demo --help (imports the demo)": [*prm, "demo", "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, argv in commands.items():  # in turn: a busy moment of the machine hits every command
            times[name].append(_time(argv))
    baseline = statistics.median(times["python -c pass (baseline)"])
    print(f"{'command':<38} {'median':>9} {'min':>9} {'x baseline':>11}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<38} {median * 1000:>7.0f}ms {min(values) * 1000:>7.0f}ms {median / baseline:>10.1f}x")
    help_s = statistics.median(times["prm --help"])
    met = "met" if help_s < TARGET_S else "NOT met"
    print(f"prm --help: {help_s:.2f} s against a target of {TARGET_S:.0f} s: {met} ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
