"""Storage backends behind one interface (collector/store/base.py): SQLite (the embedded default, one
collector) and PostgreSQL (any number of collectors sharing one database)."""

from collector.store.base import Store
from collector.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """``sqlite:///path/to/db`` or a bare path; ``postgresql://user@host/db`` (libpq URL, psycopg 3)."""
    if url.startswith(("postgresql://", "postgres://")):
        from collector.store.postgres import PostgresStore  # noqa: PLC0415 - psycopg only when used

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///") - 1 :])
    if "://" in url:
        raise ValueError(f"unsupported store {url!r}: sqlite:///PATH, a path, or postgresql://...")
    return SqliteStore(url)
