"""Settings: defaults, the documented file, environment overrides, one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from callbridge.config import (
    ConfigError,
    Settings,
    check_serve,
    load_settings,
    redacted,
    with_stream_secret,
)

ROOT = Path(__file__).resolve().parent.parent


def test_documented_file_matches_the_embedded_defaults() -> None:
    assert load_settings(ROOT / "config" / "callbridge.toml", environ={}) == Settings()


def test_documented_file_names_every_setting() -> None:
    table = tomllib.loads((ROOT / "config" / "callbridge.toml").read_text())
    for section, values in redacted(Settings()).items():
        assert set(table[section]) == set(values), section


def test_fixed_environment_names_override_the_file(tmp_path: Path) -> None:
    env = {
        "ELEVENLABS_API_KEY": "k",
        "CALLBRIDGE_SCRIBE_URL": "ws://127.0.0.1:9/x",
        "TWILIO_AUTH_TOKEN": "t",
        "CALLBRIDGE_PUBLIC_URL": "https://bridge.example.com",
        "CALLBRIDGE_WEBHOOK_URLS": "https://a.example/h, https://b.example/h",
        "CALLBRIDGE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "CALLBRIDGE_API_TOKENS": "one,two",
        "DATABASE_URL": "postgresql://u@h/db",
        "CALLBRIDGE_LANGUAGE": "en",
        "CALLBRIDGE_INBOUND_LABEL": "customer",
        "CALLBRIDGE_OUTBOUND_LABEL": "rep",
        "HOST": "127.0.0.1",
        "PORT": "9000",
        "CALLBRIDGE_TWILIO_VALIDATE": "false",
        "CALLBRIDGE_TURNS_TURN_END_MS": "700",
        "CALLBRIDGE_STREAM_SECRET": "0123456789abcdef0123",
    }
    s = load_settings(environ=env)
    assert s.scribe.api_key == "k" and s.scribe.url == "ws://127.0.0.1:9/x"
    assert s.webhook.urls == ("https://a.example/h", "https://b.example/h")
    assert s.api.tokens == ("one", "two")
    assert s.database.url == "postgresql://u@h/db"
    assert (s.speakers.inbound_label, s.speakers.outbound_label) == ("customer", "rep")
    assert (s.server.host, s.server.port) == ("127.0.0.1", 9000)
    assert s.twilio.validate is False and s.turns.turn_end_ms == 700
    assert s.twilio.stream_secret == "0123456789abcdef0123"
    check_serve(s)


LLM_URL = "http://127.0.0.1:11434/v1"
LLM = {"CALLBRIDGE_SUMMARY_LLM_URL": LLM_URL, "CALLBRIDGE_SUMMARY_LLM_MODEL": "llama3.1:8b"}


def test_the_ai_summary_is_off_until_its_url_is_set() -> None:
    assert not load_settings(environ={}).summary.enabled
    # an unused model or key does not matter while the URL is unset
    assert not load_settings(environ={"CALLBRIDGE_SUMMARY_LLM_MODEL": "m"}).summary.enabled
    s = load_settings(environ={**LLM, "CALLBRIDGE_SUMMARY_LLM_KEY": "sk-llm-secret"})
    assert s.summary.enabled and s.summary.llm_url == LLM_URL
    assert (s.summary.llm_model, s.summary.llm_key) == ("llama3.1:8b", "sk-llm-secret")
    assert "sk-llm-secret" not in str(redacted(s))


def test_an_unset_stream_secret_is_made_once_and_a_set_one_kept() -> None:
    settings, made = with_stream_secret(Settings())
    assert made and len(settings.twilio.stream_secret) == 64
    again, made_again = with_stream_secret(settings)
    assert again is settings and not made_again
    other, _ = with_stream_secret(Settings())
    assert other.twilio.stream_secret != settings.twilio.stream_secret


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"CALLBRIDGE_WEBHOOK_URLS": "ftp://x"}, "CALLBRIDGE_WEBHOOK_URLS"),
        ({"CALLBRIDGE_WEBHOOK_SECRET": "secret"}, "CALLBRIDGE_WEBHOOK_SECRET"),
        ({"CALLBRIDGE_WEBHOOK_SECRET": "whsec_%%%"}, "CALLBRIDGE_WEBHOOK_SECRET"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:///"}, "DATABASE_URL"),
        ({"CALLBRIDGE_PUBLIC_URL": "bridge.example.com"}, "CALLBRIDGE_PUBLIC_URL"),
        ({"CALLBRIDGE_SCRIBE_AUDIO_FORMAT": "mp3"}, "CALLBRIDGE_SCRIBE_AUDIO_FORMAT"),
        ({"CALLBRIDGE_TWILIO_VALIDATE": "maybe"}, "CALLBRIDGE_TWILIO_VALIDATE"),
        ({"CALLBRIDGE_SERVER_EVENT_LOOP": "tokio"}, "CALLBRIDGE_SERVER_EVENT_LOOP"),
        ({"CALLBRIDGE_SUMMARY_LLM_URL": "localhost:11434"}, "CALLBRIDGE_SUMMARY_LLM_URL"),
        ({"CALLBRIDGE_SUMMARY_LLM_URL": LLM_URL}, "CALLBRIDGE_SUMMARY_LLM_MODEL"),
        (
            {**LLM, "CALLBRIDGE_SUMMARY_LLM_STRUCTURED_OUTPUT": "xml"},
            "CALLBRIDGE_SUMMARY_LLM_STRUCTURED_OUTPUT",
        ),
        (
            {**LLM, "CALLBRIDGE_SUMMARY_LLM_INPUT_BUDGET_TOKENS": "500"},
            "CALLBRIDGE_SUMMARY_LLM_INPUT_BUDGET_TOKENS",
        ),
        ({**LLM, "CALLBRIDGE_SUMMARY_CONCURRENCY": "0"}, "CALLBRIDGE_SUMMARY_CONCURRENCY"),
        ({**LLM, "CALLBRIDGE_SUMMARY_LLM_TIMEOUT_S": "0"}, "CALLBRIDGE_SUMMARY_LLM_TIMEOUT_S"),
        ({"CALLBRIDGE_API_EVENTS_POLL_S": "0"}, "CALLBRIDGE_API_EVENTS_POLL_S"),
        ({"CALLBRIDGE_API_EVENTS_BUFFER": "0"}, "CALLBRIDGE_API_EVENTS_BUFFER"),
        ({"CALLBRIDGE_DATABASE_POOL_SIZE": "0"}, "CALLBRIDGE_DATABASE_POOL_SIZE"),
        ({"CALLBRIDGE_STREAM_SECRET": "short"}, "CALLBRIDGE_STREAM_SECRET"),
        ({"CALLBRIDGE_SERVER_STREAM_LEASE_S": "0"}, "CALLBRIDGE_SERVER_STREAM_LEASE_S"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ=env)
    assert error.value.setting == setting
    assert "\n" not in str(error.value)


def test_a_bad_database_url_is_named_by_its_scheme_only() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"DATABASE_URL": "mysql://admin:hunter2@db/x"})
    assert str(error.value) == "DATABASE_URL: 'mysql' is neither sqlite:///PATH nor postgresql://…"


def test_an_unsupported_audio_format_names_the_choices() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"CALLBRIDGE_SCRIBE_AUDIO_FORMAT": "pcm_16000"})
    assert str(error.value) == (
        "CALLBRIDGE_SCRIBE_AUDIO_FORMAT: 'pcm_16000' is not one of ulaw_8000, pcm_8000"
    )


def test_a_retired_setting_in_an_old_config_file_is_ignored(tmp_path: Path) -> None:
    config = tmp_path / "old.toml"
    config.write_text('[scribe]\nsend_queue_chunks = 600\naudio_format = "pcm_8000"\n')
    assert load_settings(config, environ={}).scribe.audio_format == "pcm_8000"
    config.write_text("[scribe]\nsend_queue_chunkz = 600\n")
    with pytest.raises(ConfigError, match=r"scribe\.send_queue_chunkz"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "ELEVENLABS_API_KEY"),
        ({"ELEVENLABS_API_KEY": "k"}, "CALLBRIDGE_PUBLIC_URL"),
        (
            {"ELEVENLABS_API_KEY": "k", "CALLBRIDGE_PUBLIC_URL": "https://b.example"},
            "TWILIO_AUTH_TOKEN",
        ),
    ],
)
def test_serve_needs_its_keys(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_serve(load_settings(environ=env))
    assert error.value.setting == missing


def test_unknown_keys_in_the_file_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[scribe]\napi_kee = 'x'\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert error.value.setting == "scribe.api_kee"


def test_secrets_are_masked() -> None:
    s = load_settings(environ={"ELEVENLABS_API_KEY": "sk-secret", "CALLBRIDGE_API_TOKENS": "tok"})
    shown = str(redacted(s))
    assert "sk-secret" not in shown and "tok'" not in shown
