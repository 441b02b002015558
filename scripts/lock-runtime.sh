#!/usr/bin/env bash
# Write infra/edge/requirements.lock: the exact runtime dependency set of the edge box, frozen from a
# clean venv holding only `pip install .` (the base dependencies of pyproject.toml, no extras).
# pysparkplug is not in it: it pins paho-mqtt<2, so it is installed separately with --no-deps
# (Makefile, install.sh). Run after changing the base dependencies: `make lock`.
# Usage: scripts/lock-runtime.sh [PYTHON]   (default python3; use the edge box's Python version)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-python3}"
tmp="$(mktemp -d -t lineguard-lock-XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q "$repo"
out="$repo/infra/edge/requirements.lock"
{
  echo "# lineguard edge runtime, frozen by scripts/lock-runtime.sh (make lock) from a clean venv with"
  echo "# only \`pip install .\`: $("$tmp/venv/bin/python" -V 2>&1), $(uname -m)."
  echo "# Used by make wheelhouse and, as a constraints file, by infra/edge/install.sh."
  echo "# Not here: lineguard itself, and pysparkplug (installed with --no-deps, see pyproject.toml)."
  "$tmp/venv/bin/python" -m pip freeze --exclude lineguard --exclude pysparkplug | LC_ALL=C sort -f
} >"$out"
echo "wrote $out ($(grep -vc '^#' "$out") packages)"
