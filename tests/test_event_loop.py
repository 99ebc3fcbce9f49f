"""The event loop choice: uvloop by default where installed, the stdlib loop on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from callbridge import config, event_loop
from callbridge.config import ConfigError, load_settings


async def running_loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_auto_and_uvloop_run_on_uvloop() -> None:
    assert event_loop.resolve("auto") == "uvloop"
    assert event_loop.run(running_loop_type(), "auto") is uvloop.Loop
    assert event_loop.run(running_loop_type(), "uvloop") is uvloop.Loop


def test_asyncio_runs_on_the_standard_loop() -> None:
    loop_type = event_loop.run(running_loop_type(), "asyncio")
    assert loop_type is not uvloop.Loop
    assert loop_type.__module__.startswith("asyncio")


def test_the_setting_comes_from_the_environment() -> None:
    settings = load_settings(environ={"CALLBRIDGE_SERVER_EVENT_LOOP": "asyncio"})
    assert settings.server.event_loop == "asyncio"
    assert load_settings(environ={}).server.event_loop == "auto"


def test_insisting_on_uvloop_where_it_is_missing_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config, "uvloop_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"CALLBRIDGE_SERVER_EVENT_LOOP": "uvloop"})
    assert error.value.setting == "CALLBRIDGE_SERVER_EVENT_LOOP"
    assert "not installed" in str(error.value)
    # auto falls back quietly
    monkeypatch.setattr(event_loop, "uvloop_available", lambda: False)
    assert event_loop.resolve("auto") == "asyncio"
