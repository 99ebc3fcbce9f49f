"""Schema migrations with several instances: two `serve` processes starting together on an
empty PostgreSQL database both come up (one applies the schema while the other waits), and
`serve` refuses a database whose schema is newer than it knows, with one line."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from callbridge.store.migrations import load_migrations
from callbridge.store.postgres import MIGRATION_LOCK_SPACE, PostgresStore
from tests.bridge_harness import free_port
from tests.cluster_harness import PG_ADMIN_URL, Instance, fresh_schema, instance_env, pg_url

pytestmark = pytest.mark.slow


def serve_instance(tmp_path: Path, name: str, database_url: str) -> Instance:
    port = free_port()
    return Instance(
        name=name,
        ip="127.0.0.1",
        port=port,
        workdir=tmp_path / name,
        env=instance_env(
            scribe_url="ws://127.0.0.1:9/v1/speech-to-text/realtime",
            public_url=f"http://127.0.0.1:{port}",
            database_url=database_url,
            host="127.0.0.1",
            port=port,
            webhook_urls=[],
            extra={},
        ),
    )


async def wait_for_log(instance: Instance, event: str, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if instance.log_events(event):
            return
        assert instance.proc is not None and instance.proc.poll() is None, instance.log_tail()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{instance.name} never logged {event}:\n{instance.log_tail()}")


@pytest.mark.postgres
async def test_two_instances_starting_together_on_an_empty_database_both_come_up(
    tmp_path: Path,
) -> None:
    migrations = [number for number, _ in load_migrations("postgres")]
    async with fresh_schema("cb_migrate") as schema:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        instances = [
            serve_instance(tmp_path, f"instance-{i}", pg_url("127.0.0.1", schema)) for i in range(2)
        ]
        try:
            # Hold the migration lock, so that both instances reach it before either has
            # applied anything: they start together, whatever the machine's speed.
            lock = (MIGRATION_LOCK_SPACE, schema)
            await admin.execute("SELECT pg_advisory_lock($1, hashtext($2))", *lock)
            for instance in instances:
                instance.start()
            await asyncio.gather(
                *(wait_for_log(instance, "store.migration_waiting") for instance in instances)
            )
            tables = await admin.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", schema
            )
            assert tables == 0
            await admin.execute("SELECT pg_advisory_unlock($1, hashtext($2))", *lock)

            await asyncio.gather(*(instance.wait_healthy() for instance in instances))
            applied = await admin.fetch(
                f"SELECT version FROM {schema}.callbridge_schema ORDER BY version"
            )
            assert [row["version"] for row in applied] == migrations  # each applied once
            migrated = sorted(len(i.log_events("store.migrated")) for i in instances)
            assert migrated == [0, len(migrations)]  # one applied, the other found it done
            assert [await instance.stop() for instance in instances] == [0, 0]
        finally:
            for instance in instances:
                instance.kill()
            await admin.execute("SELECT pg_advisory_unlock_all()")
            await admin.close()


async def newer_database(backend: str, tmp_path: Path, schema: str) -> tuple[str, int]:
    """A migrated database whose schema version is one past the newest this code knows."""
    newer = load_migrations("sqlite" if backend == "sqlite" else "postgres")[-1][0] + 1
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'bridge.db'}"
        with sqlite3.connect(tmp_path / "bridge.db") as conn:
            conn.execute(f"PRAGMA user_version = {newer}")
        return url, newer
    url = pg_url("127.0.0.1", schema)
    store = PostgresStore(url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO callbridge_schema VALUES ($1)", newer)
    finally:
        await conn.close()
    return url, newer


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_serve_refuses_a_newer_schema_with_one_line(
    tmp_path: Path, backend: str, workers: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        schema = (
            await stack.enter_async_context(fresh_schema("cb_newer")) if backend != "sqlite" else ""
        )
        url, newer = await newer_database(backend, tmp_path, schema)
        instance = serve_instance(tmp_path, "instance", url)
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "callbridge", "serve", "--workers", workers],
            env=instance.env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # One line says why (log lines, JSON, may come before it: e.g. store.migration_waiting).
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0]
    assert f"schema version {newer}, newer than" in lines[0]
    assert "upgrade callbridge" in lines[0]
