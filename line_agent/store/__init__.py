"""The time-series store: PostgreSQL (plain or TimescaleDB) through psycopg 3."""
