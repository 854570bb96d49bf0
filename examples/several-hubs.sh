#!/usr/bin/env bash
# Start N hub processes on one database, on consecutive ports, and stop them all on Ctrl-C.
# usage: several-hubs.sh [N=3] [FIRST_PORT=8701]   (config from PRM_CONFIG or ./prm.toml)
set -euo pipefail
n="${1:-3}"
first="${2:-8701}"
prm db upgrade   # once, before the processes start
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in $(seq 0 $((n - 1))); do
  prm serve --host 127.0.0.1 --port $((first + i)) &
  pids+=($!)
done
wait
