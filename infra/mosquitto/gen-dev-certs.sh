#!/usr/bin/env bash
# Generate a DEVELOPMENT certificate authority plus a broker server certificate (and optionally
# client certificates) with openssl. Not for production: the CA key sits unencrypted on disk.
#
# Usage: gen-dev-certs.sh [--out DIR] [--days N] [--client NAME]... [HOSTNAME|IP]...
#   --out DIR       where to write ca.crt, ca.key, server.crt, server.key (default: ./certs)
#   --days N        validity of the server/client certificates (default: 825)
#   --client NAME   also issue NAME.crt/NAME.key for mutual TLS (repeatable)
#   HOSTNAME|IP     extra subjectAltNames for the server cert; localhost, 127.0.0.1,
#                   mosquitto and broker are always included.
# An existing CA in DIR is reused, so re-running adds or renews leaf certificates only.
set -euo pipefail

out="./certs"
days=825
clients=()
sans=(localhost 127.0.0.1 mosquitto broker)

die() { echo "gen-dev-certs.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift 2 ;;
    --days) [ $# -ge 2 ] || die "--days needs a number"; days="$2"; shift 2 ;;
    --client) [ $# -ge 2 ] || die "--client needs a name"; clients+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) die "unknown option: $1" ;;
    *) sans+=("$1"); shift ;;
  esac
done
case "$days" in ''|*[!0-9]*) die "--days must be a positive integer, got '$days'" ;; esac
command -v openssl >/dev/null || die "openssl not found"

mkdir -p "$out"
chmod 755 "$out"  # the broker container (uid 1883) must traverse it
cd "$out"
umask 077

if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days 3650 \
    -subj "/CN=lineguard dev CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# Build subjectAltName: IP addresses and DNS names need different prefixes.
san_list=""
for name in "${sans[@]}"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then entry="IP:$name"; else entry="DNS:$name"; fi
  san_list="${san_list:+$san_list,}$entry"
done

issue() {  # issue NAME CN EXTENDED_KEY_USAGE [SAN]
  local name="$1" cn="$2" eku="$3" san="${4:-}"
  local ext
  ext="$(mktemp)"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$days" -sha256 -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

issue server "${sans[0]}" serverAuth "$san_list"
for c in "${clients[@]+"${clients[@]}"}"; do
  issue "$c" "$c" clientAuth
done

# Certificates are public; keys stay 0600. The broker image runs as uid 1883: make the server
# key readable by it when we are root (otherwise the operator chowns it).
chmod 644 ./*.crt
if [ "$(id -u)" = 0 ]; then
  chown 1883:1883 server.key 2>/dev/null || true
else
  echo "note: for the eclipse-mosquitto container run: sudo chown 1883:1883 $(pwd)/server.key" >&2
fi
openssl verify -CAfile ca.crt server.crt >/dev/null
echo "certificates written to $(pwd): ca.crt server.crt server.key${clients[*]:+ (clients: ${clients[*]})}"
