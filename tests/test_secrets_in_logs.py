"""No secret reaches a log: the settings dump, URLs with credentials, exception texts, and a
real ``callbridge serve`` run with a recognisable secret in every setting that holds one."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import structlog

from callbridge.config import load_settings, redacted
from callbridge.logs import configure_logging
from callbridge.masking import mask_text, mask_url
from callbridge.testing.llm_emulator import LLMEmulator
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import TwilioCallSimulator, post_status
from callbridge.testing.webhook_receiver import WebhookReceiver
from tests.bridge_harness import free_port
from tests.test_bridge_e2e import track
from tests.test_serve_process import base_env, wait_healthy

PG_URL = os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# One recognisable secret per setting that holds one (each a distinct marker).
XI_KEY = "sk-xi-SECRET1-elevenlabs"
TWILIO_TOKEN = "SECRET2twilioauthtoken"
SHARED_KEY = "SECRET3sharedkey"
API_TOKENS = ("SECRET4-api-token-one", "SECRET5-api-token-two")
WEBHOOK_KEY = b"SECRET6-webhook-signing-key!"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
HOOK_USER, HOOK_PASSWORD, HOOK_QUERY = "SECRET7user", "SECRET8password", "SECRET9querytoken"
DB_PASSWORD = "SECRET10dbpassword"
STREAM_SECRET = "SECRET11-stream-secret-value"
LLM_KEY = "sk-llm-SECRET12"
MARKERS = [
    XI_KEY,
    TWILIO_TOKEN,
    SHARED_KEY,
    *API_TOKENS,
    WEBHOOK_SECRET.removeprefix("whsec_"),
    WEBHOOK_KEY.decode(),
    HOOK_USER,
    HOOK_PASSWORD,
    HOOK_QUERY,
    DB_PASSWORD,
    STREAM_SECRET,
    LLM_KEY,
    "SECRET",  # and, while at it, none of their common part
]


def test_the_settings_dump_masks_every_secret_and_every_credential_in_a_url() -> None:
    settings = load_settings(
        environ={
            "ELEVENLABS_API_KEY": XI_KEY,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "CALLBRIDGE_TWILIO_SHARED_KEYS": f"KEY1:{SHARED_KEY}",
            "CALLBRIDGE_API_TOKENS": ",".join(API_TOKENS),
            "CALLBRIDGE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CALLBRIDGE_WEBHOOK_URLS": (
                f"https://{HOOK_USER}:{HOOK_PASSWORD}@hooks.example/in?token={HOOK_QUERY},"
                "https://plain.example/hook"
            ),
            "DATABASE_URL": f"postgresql://bridge:{DB_PASSWORD}@db.example:5432/calls",
            "CALLBRIDGE_STREAM_SECRET": STREAM_SECRET,
            "CALLBRIDGE_SUMMARY_LLM_URL": "https://llm.example/v1",
            "CALLBRIDGE_SUMMARY_LLM_MODEL": "m",
            "CALLBRIDGE_SUMMARY_LLM_KEY": LLM_KEY,
            "CALLBRIDGE_SCRIBE_KEYTERMS": "callbridge,Twilio",
        }
    )
    shown = redacted(settings)
    text = repr(shown)
    for marker in MARKERS:
        assert marker not in text, marker
    assert shown["webhook"]["urls"] == (
        "https://***@hooks.example/in?token=***",
        "https://plain.example/hook",
    )
    assert shown["database"]["url"] == "postgresql://***@db.example:5432/calls"
    assert shown["scribe"]["api_key"] == shown["twilio"]["stream_secret"] == "***"
    # What is not a secret stays readable.
    assert shown["scribe"]["keyterms"] == ("callbridge", "Twilio")
    assert shown["summary"]["llm_max_output_tokens"] == 1024
    assert shown["summary"]["llm_url"] == "https://llm.example/v1"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@db:5432/x?sslmode=require", "postgresql://***@db:5432/x?sslmode=***"),
        ("https://user@h.example/hook", "https://***@h.example/hook"),
        ("https://h.example/hook?token=abc&x=", "https://h.example/hook?token=***&x=***"),
        ("https://h.example/hook#key", "https://h.example/hook#***"),
        ("https://h.example/hook", "https://h.example/hook"),
        ("sqlite:///./callbridge.db", "sqlite:///./callbridge.db"),
        ("not a url", "not a url"),
    ],
)
def test_urls_keep_where_they_point_and_lose_their_credentials(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_log_lines_and_tracebacks_lose_credentials() -> None:
    stream = io.StringIO()
    configure_logging("json", "info")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stream))
    log = structlog.get_logger("test")
    try:
        raise ConnectionError(f"cannot reach https://{HOOK_USER}:{HOOK_PASSWORD}@h/x?k=v")
    except ConnectionError:
        log.exception("thing.failed", target=f"https://h/?token={HOOK_QUERY}", api_token="t0k")
    logging.getLogger("aiohttp.server").error(
        "boom at postgresql://u:%s@db/x", DB_PASSWORD
    )  # a library's own log record
    configure_logging("auto", "warning")
    out = stream.getvalue()
    assert "thing.failed" in out and "cannot reach https://***@h/x?k=***" in out
    for secret in (HOOK_USER, HOOK_PASSWORD, HOOK_QUERY, "t0k"):
        assert secret not in out
    assert mask_text(f"at postgresql://u:{DB_PASSWORD}@db/x") == "at postgresql://***@db/x"


# --- the real server -------------------------------------------------------------------------


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    schema = f"cb_secrets_{uuid.uuid4().hex[:10]}"
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    yield schema
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


def with_password(url: str, password: str, schema: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{password}@{host}?search_path={schema}"


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_served_call_logs_no_secret_of_any_setting(tmp_path: Path, pg_schema: str) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    async with (
        ScribeEmulator(api_key=XI_KEY, transcriber="tones") as scribe,
        WebhookReceiver(secret=WEBHOOK_SECRET) as hooks,
        LLMEmulator(api_key=LLM_KEY) as llm,
    ):
        hook_url = hooks.url.replace("http://", f"http://{HOOK_USER}:{HOOK_PASSWORD}@")
        env = base_env(
            ELEVENLABS_API_KEY=XI_KEY,
            CALLBRIDGE_SCRIBE_URL=scribe.url,
            TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
            CALLBRIDGE_TWILIO_SHARED_KEYS=f"KEY1:{SHARED_KEY}",
            CALLBRIDGE_PUBLIC_URL=public,
            CALLBRIDGE_API_TOKENS=",".join(API_TOKENS),
            CALLBRIDGE_WEBHOOK_URLS=f"{hook_url}?token={HOOK_QUERY}",
            CALLBRIDGE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            DATABASE_URL=with_password(PG_URL, DB_PASSWORD, pg_schema),
            CALLBRIDGE_STREAM_SECRET=STREAM_SECRET,
            CALLBRIDGE_SUMMARY_LLM_URL=llm.url,
            CALLBRIDGE_SUMMARY_LLM_MODEL=llm.model,
            CALLBRIDGE_SUMMARY_LLM_KEY=LLM_KEY,
            CALLBRIDGE_JOBS_POLL_INTERVAL_S="0.1",
            CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="20",
            CALLBRIDGE_LOGGING_FORMAT="json",
            CALLBRIDGE_LOGGING_LEVEL="debug",
            PORT=str(port),
            HOST="127.0.0.1",
        )
        proc = subprocess.Popen(  # noqa: ASYNC220 (starting the server under test is instant)
            [sys.executable, "-m", "callbridge", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            await wait_healthy(public, proc)
            sim = TwilioCallSimulator(
                f"ws://127.0.0.1:{port}/twilio/media",
                auth_token=TWILIO_TOKEN,
                public_url=public,
                stream_secret=STREAM_SECRET,
            )
            await sim.run(track(2500, [(200, [500, 550, 600])], seed=1), speed=0)
            async with aiohttp.ClientSession() as http:
                assert (
                    await post_status(http, public, public, TWILIO_TOKEN, sim.call_sid, "completed")
                    == 204
                )
                # Refusals log too: a wrong signature, a wrong API token.
                assert await post_status(http, public, public, "wrong", sim.call_sid) == 403
                bad = {"Authorization": "Bearer not-a-token"}
                async with http.get(f"{public}/v1/calls", headers=bad) as response:
                    assert response.status == 401
                good = {"Authorization": f"Bearer {API_TOKENS[1]}"}
                async with http.get(f"{public}/v1/calls", headers=good) as response:
                    assert response.status == 200
            # call.started, a segment, call.ended and call.summarized: every path that uses a
            # secret (Scribe key, webhook signing and basic auth, the LLM key) has run.
            await hooks.wait_for(4, timeout=30)
            assert all(request.signature_valid for request in hooks.requests)
            assert llm.requests and all(r.status == 200 for r in llm.requests)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = await asyncio.to_thread(proc.communicate, timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
    logs = (out + err).decode("utf-8", "replace")
    assert "callbridge.serving" in logs and "call.finished" in logs  # the logs were captured
    assert f"http://***@127.0.0.1:{hooks.port}/hooks?token=***" in logs
    for marker in MARKERS:
        assert marker not in logs, f"{marker!r} is in the log"
