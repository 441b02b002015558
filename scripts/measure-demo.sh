#!/usr/bin/env bash
# Time `make demo` on a fresh clone to a console that answers (docs/BENCHMARKS.md, Edge footprint).
# Usage: scripts/measure-demo.sh DIR [REPO]   clones REPO (default: this checkout's committed state)
# into DIR (removed first), runs `make demo` with a 20 s demo on a free port, polls /healthz.
# PIP_NO_CACHE_DIR=1 scripts/measure-demo.sh DIR  measures with every wheel fetched again.
set -euo pipefail
dir="${1:?usage: measure-demo.sh DIR [REPO]}"
repo="${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
rm -rf "$dir"
git clone -q "$repo" "$dir"
cd "$dir"
log="$dir/measure-demo.log"
t0="$(date +%s.%N)"
( make demo DEMO_ARGS="--duration 20 --port $port" >"$log" 2>&1; echo "rc=$?" >>"$log" ) &
until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
  sleep 0.5
  if grep -q '^rc=' "$log"; then echo "demo ended before the console answered:"; tail "$log"; exit 1; fi
done
t1="$(date +%s.%N)"
echo "console_up_s=$(python3 -c "print(round($t1 - $t0, 1))")"
wait
grep '^rc=' "$log"
echo "venv_mb=$(du -sm "$dir/.venv" | cut -f1)"
