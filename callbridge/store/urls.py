"""Which store a ``DATABASE_URL`` names: the one rule, checked at start-up and used to open it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Backend = Literal["sqlite", "postgresql"]


def database_backend(url: str) -> Backend:
    """``sqlite:///PATH`` or ``postgresql://…`` (``postgres://`` too); ValueError otherwise,
    with a message that shows the scheme only (the rest of a URL may hold a password)."""
    if url.startswith("sqlite:///"):
        sqlite_path(url)
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    raise ValueError(f"{scheme!r} is neither sqlite:///PATH nor postgresql://…")


def sqlite_path(url: str) -> Path:
    """``sqlite:///./x.db`` → ``./x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    if not path:
        raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///./callbridge.db")
    return Path(path)
