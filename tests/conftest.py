"""Fixtures shared by the tests of the durable store: ``backend`` and ``store`` run a test
once per store backend (SQLite, and PostgreSQL when marked ``postgres``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callbridge.store.base import DurableStore
from tests.test_store_contract import Backend


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    backend = Backend(request.param, tmp_path)
    await backend.setup()
    yield backend
    await backend.teardown()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[DurableStore]:
    store = backend.store()
    await store.open()
    yield store
    await store.close()
