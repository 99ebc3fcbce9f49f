"""Choose and build the store that ``DATABASE_URL`` names (not yet opened)."""

from __future__ import annotations

from collections.abc import Sequence

from callbridge.store.base import DurableStore, StoreError
from callbridge.store.postgres import PostgresStore
from callbridge.store.sqlite import SqliteStore
from callbridge.store.urls import database_backend, sqlite_path

__all__ = ["open_store", "sqlite_path"]


def open_store(
    url: str, *, webhook_targets: Sequence[str] = (), pool_size: int = 10
) -> DurableStore:
    """The store for ``url``; call ``await store.open()`` before use.

    ``webhook_targets`` (``CALLBRIDGE_WEBHOOK_URLS``) are the URLs every event gets a
    delivery for; the webhook dispatcher must be given the same list. ``pool_size`` caps a
    PostgreSQL store's connections (``CALLBRIDGE_DATABASE_POOL_SIZE``).
    """
    try:
        backend = database_backend(url)  # checked at start-up already (config)
    except ValueError as exc:
        raise StoreError(f"DATABASE_URL: {exc}") from None
    if backend == "sqlite":
        return SqliteStore(sqlite_path(url), webhook_targets=webhook_targets, url=url)
    return PostgresStore(url, webhook_targets=webhook_targets, max_connections=pool_size)
