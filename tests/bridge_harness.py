"""A real bridge on a local port, wired to the Scribe emulator, for end-to-end tests."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from callbridge.app import create_app
from callbridge.config import (
    ApiSettings,
    DatabaseSettings,
    ScribeSettings,
    ServerSettings,
    Settings,
    TurnSettings,
    TwilioSettings,
    WebhookSettings,
)
from callbridge.context import REGISTRY, SETTINGS, STORE
from callbridge.http_limits import runner_options
from callbridge.store.base import Store
from callbridge.testing.twilio_simulator import TwilioCallSimulator

AUTH_TOKEN = "test-auth-token"
API_TOKEN = "test-api-token"
STREAM_SECRET = "test-stream-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bridge_settings(
    tmp_path: Path,
    scribe_url: str,
    port: int,
    *,
    webhook_urls: Sequence[str] = (),
    webhook_secret: str = "",
    turns: dict[str, Any] | None = None,
    scribe: dict[str, Any] | None = None,
) -> Settings:
    """Settings for a test bridge: simulated calls run faster than real time, so the
    commit spacing and the catch-up limit (both wall-clock) are relaxed."""
    relaxed: dict[str, Any] = {"min_commit_interval_ms": 10, "catchup_speed": 1000.0}
    turn_settings = dataclasses.replace(TurnSettings(), **(relaxed | (turns or {})))
    return Settings(
        server=ServerSettings(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}"),
        twilio=TwilioSettings(auth_token=AUTH_TOKEN, stream_secret=STREAM_SECRET),
        scribe=dataclasses.replace(
            ScribeSettings(api_key="test-key", url=scribe_url), **(scribe or {})
        ),
        turns=turn_settings,
        webhook=WebhookSettings(
            urls=tuple(webhook_urls), secret=webhook_secret, backoff_initial_s=0.05
        ),
        api=ApiSettings(tokens=(API_TOKEN,)),
        database=DatabaseSettings(
            url=f"sqlite:///{tmp_path / 'bridge.db'}", journal_dir=str(tmp_path / "journal")
        ),
    )


@dataclass
class RunningBridge:
    settings: Settings
    app: web.Application
    runner: web.AppRunner

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.server.port}/twilio/media"

    @property
    def store(self) -> Store:
        return self.app[STORE]

    @property
    def live_calls(self) -> int:
        return len(self.app[REGISTRY])

    def simulator(self, **kwargs: Any) -> TwilioCallSimulator:
        """A simulated stream for this bridge, with the call's stream token (pass
        ``stream_secret=None`` and your own ``custom_parameters`` to send another)."""
        kwargs.setdefault("stream_secret", self.app[SETTINGS].twilio.stream_secret)
        return TwilioCallSimulator(
            self.ws_url,
            auth_token=AUTH_TOKEN,
            public_url=self.settings.server.public_url,
            **kwargs,
        )


@asynccontextmanager
async def running_bridge(
    settings: Settings, configure: Callable[[web.Application], None] | None = None
) -> AsyncIterator[RunningBridge]:
    """The bridge on its port; ``configure`` may adjust the app before it starts (e.g.
    register a job kind)."""
    app = create_app(settings)
    if configure is not None:
        configure(app)
    runner = web.AppRunner(app, shutdown_timeout=5.0, **runner_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.server.port)
    await site.start()
    try:
        yield RunningBridge(settings, app, runner)
    finally:
        await runner.cleanup()
