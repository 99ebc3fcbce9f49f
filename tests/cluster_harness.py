"""Several ``callbridge serve`` processes on one PostgreSQL, each a host of its own, behind HAProxy.

:func:`running_cluster` gives the multi-instance tests what a deployment has: instances
that share nothing but the database (each in its own network namespace, with its own
address, working directory and temporary directory), a real load balancer in front of them
(``config/haproxy.cfg``, terminating TLS as production would), the Scribe emulator and
webhook receivers on the "outside" address, and a fresh PostgreSQL schema per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.webhook_receiver import WebhookReceiver
from tests.bridge_harness import API_TOKEN, AUTH_TOKEN, STREAM_SECRET
from tests.test_serve_process import base_env
from tests.testnet import HostNetwork, NetHost, host_network, reachable, skip_or_fail

PG_ADMIN_URL = os.environ.get(
    "CALLBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
HAPROXY_CONFIG = Path(__file__).parents[1] / "config" / "haproxy.cfg"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
INSTANCE_PORT = 8080


def pg_url(host: str, schema: str) -> str:
    """The test database at ``host`` (as an instance reaches it), confined to ``schema``."""
    parts = urlsplit(PG_ADMIN_URL)
    netloc = parts.netloc.rsplit("@", 1)
    port = parts.port or 5432
    userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(
        (parts.scheme, f"{userinfo}{host}:{port}", parts.path, f"search_path={schema}", "")
    )


@asynccontextmanager
async def fresh_schema(prefix: str = "cb_multi") -> AsyncIterator[str]:
    """A new, empty schema in the test database, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        skip_or_fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    try:
        yield schema
    finally:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


@dataclass
class Instance:
    """One ``callbridge serve`` process: its own host (namespace), directory and log."""

    name: str
    ip: str
    port: int
    workdir: Path
    env: dict[str, str]
    host: NetHost | None = None  # None: this machine's own network
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    def start(self, args: Sequence[str] = ()) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "callbridge", "serve", *args]
        if self.host is not None:
            argv = self.host.command(argv)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env={**self.env, "TMPDIR": str(self.workdir / "tmp")},
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_healthy(self, timeout_s: float = 30.0) -> None:
        async with aiohttp.ClientSession() as http:
            deadline = asyncio.get_running_loop().time() + timeout_s
            while asyncio.get_running_loop().time() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.base_url}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} did not become healthy:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the process dies with whatever it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (drains live calls); SIGKILL after ``timeout_s``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return await asyncio.to_thread(proc.wait)

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The instance's JSON log lines (those named ``event``, if given)."""
        out = []
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and (event is None or entry.get("event") == event):
                        out.append(entry)
        return out

    def calls_started(self) -> set[str]:
        return {e["call_sid"] for e in self.log_events("call.stream_started") if "call_sid" in e}

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def self_signed_certificate(directory: Path, ip: str) -> tuple[Path, ssl.SSLContext]:
    """A PEM (certificate + key) for ``ip``, and a client context that trusts it."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=callbridge-test"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", f"subjectAltName=IP:{ip}", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    bundle = directory / "haproxy.pem"
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    return bundle, ssl.create_default_context(cafile=str(cert))


@dataclass
class LoadBalancer:
    """HAProxy with ``config/haproxy.cfg`` on a host of its own, TLS terminated with a
    self-signed certificate."""

    host: NetHost
    port: int
    backends: Sequence[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    client_ssl: ssl.SSLContext | None = None

    @property
    def ip(self) -> str:
        return self.host.ip

    @property
    def public_url(self) -> str:
        return f"https://{self.ip}" + ("" if self.port == 443 else f":{self.port}")

    @property
    def ws_url(self) -> str:
        return self.public_url.replace("https://", "wss://") + "/twilio/media"

    def start(self) -> None:
        bundle, self.client_ssl = self_signed_certificate(self.workdir / "tls", self.ip)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CALLBRIDGE_LB_BIND": f"{self.ip}:{self.port}",
            "CALLBRIDGE_LB_CERT": str(bundle),
            "CALLBRIDGE_LB_CHECK_INTER": "300ms",
            "CALLBRIDGE_LB_MAXCONN": "2000",
        }
        for index, backend in enumerate(self.backends, start=1):
            env[f"CALLBRIDGE_BRIDGE_{index}"] = backend
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "haproxy.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.host.command(["haproxy", "-db", "-f", str(HAPROXY_CONFIG)]),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_listening(self) -> None:
        assert self.proc is not None
        for _ in range(100):
            if self.proc.poll() is not None:
                log_text = (self.workdir / "haproxy.log").read_text(errors="replace")
                raise AssertionError(f"haproxy exited:\n{log_text}")
            if await asyncio.to_thread(reachable, self.ip, self.port, 0.2):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("haproxy is not listening")

    def session(self) -> aiohttp.ClientSession:
        """A client session that trusts the proxy's certificate."""
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.client_ssl))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    net: HostNetwork
    schema: str
    emulator: ScribeEmulator
    receivers: list[WebhookReceiver]
    instances: list[Instance]
    balancer: LoadBalancer
    database_url: str = field(default="")


def instance_env(
    *,
    scribe_url: str,
    public_url: str,
    database_url: str,
    host: str,
    port: int,
    webhook_urls: Sequence[str],
    extra: Mapping[str, str],
) -> dict[str, str]:
    return base_env(
        ELEVENLABS_API_KEY="test-key",
        CALLBRIDGE_SCRIBE_URL=scribe_url,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        CALLBRIDGE_STREAM_SECRET=STREAM_SECRET,  # every instance: one secret
        CALLBRIDGE_PUBLIC_URL=public_url,
        CALLBRIDGE_API_TOKENS=API_TOKEN,
        CALLBRIDGE_WEBHOOK_URLS=",".join(webhook_urls),
        CALLBRIDGE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        DATABASE_URL=database_url,
        HOST=host,
        PORT=str(port),
        CALLBRIDGE_LOGGING_FORMAT="json",
        CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="20",
        CALLBRIDGE_TURNS_CATCHUP_SPEED="1000",
        **extra,
    )


@asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    *,
    instances: int = 2,
    targets: int = 1,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """``instances`` serve processes in namespaces, behind HAProxy in one more, on a fresh
    schema."""
    with _network(instances + 1) as net:
        *hosts, balancer_host = net.hosts
        if not await asyncio.to_thread(reachable, net.host_ip, 5432):
            skip_or_fail(
                f"PostgreSQL does not accept connections on {net.host_ip}:5432 "
                "(run .ci/postgres-test-subnet.sh)"
            )
        async with contextlib.AsyncExitStack() as stack:
            schema = await stack.enter_async_context(fresh_schema())
            database_url = pg_url(net.host_ip, schema)
            emulator = await stack.enter_async_context(
                ScribeEmulator(api_key="test-key", transcriber="tones", host=net.host_ip)
            )
            receivers = [
                await stack.enter_async_context(
                    WebhookReceiver(secret=WEBHOOK_SECRET, host=net.host_ip, path=f"/hooks/{i}")
                )
                for i in range(targets)
            ]
            balancer = LoadBalancer(
                balancer_host,
                443,
                [f"{host.ip}:{INSTANCE_PORT}" for host in hosts],
                tmp_path / "haproxy",
            )
            members = [
                Instance(
                    name=f"instance-{index}",
                    ip=host.ip,
                    port=INSTANCE_PORT,
                    workdir=tmp_path / f"instance-{index}",
                    host=host,
                    env=instance_env(
                        scribe_url=emulator.url,
                        public_url=balancer.public_url,
                        database_url=database_url,
                        host=host.ip,
                        port=INSTANCE_PORT,
                        webhook_urls=[receiver.url for receiver in receivers],
                        extra=extra_env or {},
                    ),
                )
                for index, host in enumerate(hosts)
            ]
            stack.callback(balancer.stop)
            for member in members:
                stack.callback(member.kill)
            for member in members:
                member.start()
            await asyncio.gather(*(member.wait_healthy() for member in members))
            balancer.start()
            await balancer.wait_listening()
            yield Cluster(net, schema, emulator, receivers, members, balancer, database_url)


@contextlib.contextmanager
def _network(hosts: int) -> Iterator[HostNetwork]:
    from tests.testnet import NetnsUnavailable, check_available

    try:
        check_available()
    except NetnsUnavailable as exc:
        skip_or_fail(str(exc))
    with host_network(hosts) as net:
        yield net
