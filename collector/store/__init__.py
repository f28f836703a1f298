"""Storage backends behind one interface (collector/store/base.py); SQLite is the default."""

from collector.store.base import Store
from collector.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """``sqlite:///path/to/db`` (or a bare path). Other backends plug in here."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///") - 1 :])
    if "://" in url:
        raise ValueError(f"unsupported store {url!r}: only sqlite:///PATH is built in")
    return SqliteStore(url)
