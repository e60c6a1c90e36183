"""pgmedic's Prometheus exporter: one process serving every configured instance.

Each scrape yields fresh metric families (no gauges mirroring PostgreSQL between scrapes). The OS
view (postmaster.pid and /proc) needs no SQL and is always there; the SQL view uses a fresh
connection per scrape, bounded by Prometheus' scrape timeout.
"""
