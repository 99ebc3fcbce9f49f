"""The shipped schema migrations: numbered 0001, 0002 … without gaps or repeats, the same
steps under the same names in both dialects, and what the stores load is exactly that."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from callbridge.store.migrations import DIALECTS, load_migrations

NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


def shipped(dialect: str) -> list[str]:
    folder = resources.files("callbridge.store.migrations") / dialect
    return sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("__"))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_migrations_are_numbered_from_0001_without_gaps_or_repeats(dialect: str) -> None:
    names = shipped(dialect)
    assert names, f"no migrations for {dialect}"
    malformed = [name for name in names if not NAME.fullmatch(name)]
    assert malformed == [], f"{dialect}: not NNNN_name.sql: {malformed}"
    numbers = [int(NAME.fullmatch(name).group(1)) for name in names]  # type: ignore[union-attr]
    assert numbers == list(range(1, len(names) + 1)), f"{dialect}: {names}"


def test_both_dialects_have_the_same_steps() -> None:
    sqlite, postgres = (shipped(dialect) for dialect in DIALECTS)
    assert sqlite == postgres


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_stores_load_every_shipped_migration_in_order(dialect: str) -> None:
    loaded = load_migrations(dialect)
    assert [number for number, _ in loaded] == list(range(1, len(shipped(dialect)) + 1))
    assert all(sql.strip() for _, sql in loaded)
