"""The time-series store: PostgreSQL (plain or TimescaleDB) through psycopg 3.

* ``migrate``: versioned SQL migrations (``migrations/NNN_name[.timescale|.plain].sql``).
* ``queries``: the read API (energy, energy per part, faults and downtime, defect rates, series),
  identical on both engines.
* ``timeseries``: engine-specific upkeep behind one interface (rollup refresh, retention, compression).
"""
