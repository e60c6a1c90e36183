"""The filesystems under the data directory, pg_wal and each tablespace, and the WAL waiting in pg_wal.

Read from the OS (statvfs, one scan of pg_wal), not SQL: a full WAL filesystem stops the server, and
this is the view that still answers then and after, while it will not start again.
"""

from __future__ import annotations

from pgmedic import storage

from ..context import CollectorFailed, ScrapeContext
from ..metrics import MetricSet

NAME = "storage"


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    data_directory = ctx.instance.data_directory
    seen: set[tuple[str, str]] = set()
    unreadable = []
    for place in storage.places(data_directory):
        key = (place.holds.value, place.path)
        if key in seen:  # two tablespaces linked to one directory
            continue
        seen.add(key)
        try:
            used = storage.usage(place.path)
        except OSError as exc:  # a dangling tablespace link: report the others, then fail
            unreadable.append(f"{place.holds.value} {place.path}: {exc.strerror}")
            continue
        labels = ctx.with_labels(holds=place.holds.value, path=place.path)
        out.add("pg_filesystem_size_bytes", labels, used.size_bytes)
        out.add("pg_filesystem_avail_bytes", labels, used.avail_bytes)
        out.add("pg_filesystem_files", labels, used.files)
        out.add("pg_filesystem_files_free", labels, used.files_free)
    wal = storage.wal_files(data_directory)
    out.add("pg_wal_size_bytes", ctx.labels, wal.size_bytes)
    out.add("pg_wal_segments", ctx.labels, wal.segments)
    out.add("pg_wal_archive_ready_files", ctx.labels, wal.ready_for_archive)
    if unreadable:
        raise CollectorFailed("; ".join(unreadable))
