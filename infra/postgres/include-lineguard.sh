#!/bin/sh
# docker-entrypoint-initdb.d hook (runs once, at cluster creation, after timescaledb-tune):
# include every *.conf mounted in /etc/postgresql/lineguard.d, so editing those files and
# restarting the container applies them without touching the data volume.
set -eu
conf="${PGDATA:-/var/lib/postgresql/data}/postgresql.conf"
if ! grep -q "^include_dir = '/etc/postgresql/lineguard.d'" "$conf"; then
  printf "\n# lineguard tuning (infra/postgres)\ninclude_dir = '/etc/postgresql/lineguard.d'\n" >>"$conf"
fi
