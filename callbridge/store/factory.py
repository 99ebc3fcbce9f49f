"""Choose and build the store that ``DATABASE_URL`` names (not yet opened)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from callbridge.store.base import DurableStore, StoreError
from callbridge.store.postgres import PostgresStore
from callbridge.store.sqlite import SqliteStore


def sqlite_path(url: str) -> Path:
    """``sqlite:///./x.db`` → ``./x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    if not path:
        raise StoreError(
            "DATABASE_URL: sqlite:/// needs a file path, e.g. sqlite:///./callbridge.db"
        )
    return Path(path)


def open_store(
    url: str, *, webhook_targets: Sequence[str] = (), pool_size: int = 10
) -> DurableStore:
    """The store for ``url``; call ``await store.open()`` before use.

    ``webhook_targets`` (``CALLBRIDGE_WEBHOOK_URLS``) are the URLs every event gets a
    delivery for; the webhook dispatcher must be given the same list. ``pool_size`` caps a
    PostgreSQL store's connections (``CALLBRIDGE_DATABASE_POOL_SIZE``).
    """
    if url.startswith("sqlite:///"):
        return SqliteStore(sqlite_path(url), webhook_targets=webhook_targets, url=url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, webhook_targets=webhook_targets, max_connections=pool_size)
    raise StoreError(
        f"DATABASE_URL: {url.split('://', 1)[0]!r} is neither sqlite:///PATH nor postgresql://…"
    )
