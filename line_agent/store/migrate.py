"""Versioned schema migrations: numbered SQL files applied once each, in order, in a transaction.

Files live in ``line_agent/store/migrations/NNN_name.sql``. A file whose name ends in
``.timescale.sql`` runs only when the TimescaleDB extension is available, ``.plain.sql`` only
when it is not: the same query API then sits on hypertables or on native partitions.
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+(\.timescale|\.plain)?\.sql$")


def has_timescaledb(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    return row is not None


def migration_files() -> list[tuple[str, str]]:
    """(file name, SQL) of every migration shipped with the package, in order."""
    folder = resources.files("line_agent.store") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if _NAME.match(p.name))
    return [(n, (folder / n).read_text(encoding="utf-8")) for n in names]


def migrate(url: str) -> list[str]:
    """Apply pending migrations to the database at ``url``; return the names applied."""
    applied: list[str] = []
    # No server-side prepared statements: each runs once, and a single-session server (PGlite in the
    # TimescaleDB tests) would keep one from an earlier connection under the same name.
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        # One migrator at a time: several workers may start together against one database.
        conn.execute("SELECT pg_advisory_lock(7242001)")
        try:
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            timescale = has_timescaledb(conn)
            for name, sql in migration_files():
                if name in done:
                    continue
                if name.endswith(".timescale.sql") and not timescale:
                    continue
                if name.endswith(".plain.sql") and timescale:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # trusted files shipped with us
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(7242001)")
    return applied
