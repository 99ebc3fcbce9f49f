"""The schema migrations of both backends: ``<dialect>/NNNN_name.sql``, applied in order.

Each dialect has the same numbered steps under the same names (a test checks it), so a schema
version means the same tables on SQLite and PostgreSQL.
"""

from __future__ import annotations

from importlib import resources

DIALECTS = ("sqlite", "postgres")


def load_migrations(dialect: str) -> list[tuple[int, str]]:
    """The ``(version, sql)`` pairs shipped for ``dialect``, in version order."""
    folder = resources.files(__name__) / dialect
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)
