#!/usr/bin/env bash
# Install the system packages lineguard's demo and tests use, when missing.
# Mosquitto: the MQTT 5 broker (shared subscriptions, persistent QoS 1 sessions).
# Chromium: headless browser for the console's end-to-end tests.
# Node.js/npm are expected on the machine for the TimescaleDB (PGlite) test server.
# Usage: system-deps.sh [demo]   "demo": Mosquitto only (make demo; no browser, no infra tools).
set -euo pipefail
mode="${1:-test}"
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ "$mode" = demo ]; then
  : # the demo needs nothing else (and runs on amqtt when Mosquitto cannot be installed)
else
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # The plant tests' independent meter publishes with Mosquitto's own client; the edge link test cuts a veth.
  command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  # infra/ checks: shellcheck, logrotate, promtool (Debian's prometheus package).
  command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
  command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need+=(logrotate)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "lineguard: please install: ${need[*]} (apt-get install ${need[*]}); continuing without them" >&2
  exit 0
fi
echo "lineguard: installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
