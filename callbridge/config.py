"""Settings: embedded defaults, a TOML file, then environment variables, in that order.

Every setting lives in one frozen dataclass per TOML section. A key ``section.key`` is
overridden by ``CALLBRIDGE_<SECTION>_<KEY>``; the names fixed by the external interface
(``ELEVENLABS_API_KEY``, ``DATABASE_URL``, ``PORT`` …) are aliases listed in
:data:`ENV_ALIASES`. Problems raise :class:`ConfigError`, whose message is one line that
names the setting.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import secrets
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from callbridge.event_loop import CHOICES as EVENT_LOOPS
from callbridge.event_loop import uvloop_available
from callbridge.masking import MASK, is_secret_name, mask_url
from callbridge.redaction.kinds import parse_kinds
from callbridge.scribe.options import AudioFormat
from callbridge.store.urls import database_backend

DEFAULT_CONFIG_PATH = Path("config/callbridge.toml")
MIN_STREAM_SECRET_CHARS = 16
MAX_REDACTION_HOLD_MS = 3000
RETIRED_SETTINGS = {("scribe", "send_queue_chunks")}
"""Keys that older config files carry and that no longer do anything: ignored."""


class ConfigError(Exception):
    """A missing or invalid setting. ``str()`` is one line naming the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str = ""
    workers: int = 1
    event_loop: str = "auto"  # "auto" (uvloop when installed) | "uvloop" | "asyncio"
    shutdown_timeout_s: float = 10.0
    max_message_bytes: int = 64 * 1024
    stream_lease_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """What one process takes, and how long a client may keep it waiting (README: Security)."""

    max_calls: int = 300  # media sockets one process takes at once; 0 = no limit
    start_timeout_s: float = 10.0  # a media socket without `start` by then: closed 1008
    media_timeout_s: float = 60.0  # a started stream without media this long: ends (timeout)
    max_call_s: float = 14400.0  # a call longer than this ends (max_duration)
    header_timeout_s: float = 15.0  # a connection's request head must arrive within this
    body_timeout_s: float = 15.0  # a request body must arrive within this (408 otherwise)
    ws_heartbeat_s: float = 30.0  # ping a media socket quiet this long; 0 = no pings


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    auth_token: str = ""
    validate: bool = True
    continue_with: str = "pause"  # "pause" | "dial" | "none"
    dial_number: str = ""
    pause_seconds: int = 3600
    stream_name: str = "callbridge"
    shared_keys: tuple[
        str, ...
    ] = ()  # "KEY_ID:SECRET" pairs for Twilio SharedKey (HMAC-SHA256) signing
    stream_secret: str = ""  # key of the per-call stream token; random at start-up when unset


@dataclass(frozen=True, slots=True)
class ScribeSettings:
    api_key: str = ""
    url: str = "wss://api.elevenlabs.io/v1/speech-to-text/realtime"
    model_id: str = "scribe_v2_realtime"
    audio_format: AudioFormat = "ulaw_8000"
    language: str = ""
    include_timestamps: bool = True
    keyterms: tuple[str, ...] = ()
    chunk_ms: int = 100
    connect_timeout_s: float = 10.0
    final_transcript_timeout_s: float = 3.0
    batch_url: str = "https://api.elevenlabs.io/v1/speech-to-text"  # CALLBRIDGE_SCRIBE_BATCH_URL
    batch_transcripts_url: str = ""  # "{transcription_id}" in it; empty: <batch_url>/transcripts/…
    batch_model_id: str = "scribe_v2"


@dataclass(frozen=True, slots=True)
class TurnSettings:
    vad_threshold_db: float = 9.0
    vad_min_level_dbfs: float = -50.0
    vad_onset_ms: int = 60
    vad_hangover_ms: int = 240
    vad_talker_gate_db: float = 10.0
    vad_sustain_ms: int = 1500
    preroll_ms: int = 200
    turn_end_ms: int = 600
    takeover_ms: int = 300
    soft_max_segment_ms: int = 20000
    max_segment_ms: int = 30000
    pause_split_ms: int = 200
    hold_cut_ms: int = 1000
    hold_max_ms: int = 2000
    hold_pause_ms: int = 60
    min_commit_interval_ms: int = 1000
    idle_commit_ms: int = 20000
    backlog_limit_s: int = 120
    catchup_speed: float = 4.0


@dataclass(frozen=True, slots=True)
class SpeakerSettings:
    inbound_label: str = "caller"
    outbound_label: str = "agent"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    urls: tuple[str, ...] = ()
    secret: str = ""
    timeout_s: float = 10.0
    max_in_flight: int = 64
    retry_for_s: float = 86400.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 600.0
    keep_finished_s: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class RedactionSettings:
    kinds: tuple[str, ...] = ()  # CALLBRIDGE_REDACT: pci, ssn, dob
    hold_ms: int = 2500


@dataclass(frozen=True, slots=True)
class PostcallSettings:
    mode: str = "off"  # CALLBRIDGE_POSTCALL: "off" | "batch"
    audio_dir: str = "callbridge-audio"
    max_audio_mb: int = 4096
    send: str = "speech"  # "speech" | "all"
    tag_audio_events: bool = True
    concurrency: int = 2
    timeout_s: float = 300.0
    retry_for_s: float = 3600.0
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 300.0
    keep_remote: bool = False
    enable_logging: bool = True
    sweep_interval_s: float = 600.0

    @property
    def enabled(self) -> bool:
        return self.mode == "batch"


@dataclass(frozen=True, slots=True)
class JobSettings:
    poll_interval_s: float = 2.0
    keep_finished_s: float = 7 * 86400.0
    shutdown_grace_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ApiSettings:
    tokens: tuple[str, ...] = ()
    max_page_size: int = 200
    events_poll_s: float = 1.0  # how often event streams look for other processes' events
    events_heartbeat_s: float = 15.0  # a comment line on an idle event stream
    events_buffer: int = 1000  # events waiting for one stream client before it is dropped
    events_write_timeout_s: float = 30.0  # a stream client that takes longer is dropped


@dataclass(frozen=True, slots=True)
class SummarySettings:
    """The AI summary (``CALLBRIDGE_SUMMARY_LLM_*``); off while ``llm_url`` is empty."""

    llm_url: str = ""
    llm_model: str = ""
    llm_key: str = ""
    llm_timeout_s: float = 120.0
    llm_structured_output: str = "auto"  # "auto" | "json_schema" | "json_object" | "none"
    llm_temperature: float = 0.0  # below 0: not sent
    llm_max_output_tokens: int = 1024
    llm_input_budget_tokens: int = 8000
    concurrency: int = 4
    retry_for_s: float = 3600.0
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.llm_url)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = True  # GET /metrics and the bridge's metrics; off: 404 and no work


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = "sqlite:///./callbridge.db"
    journal_dir: str = "callbridge-journal"
    pool_size: int = 10  # PostgreSQL connections per process, at most


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    format: str = "auto"  # "auto" | "json" | "console"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    scribe: ScribeSettings = field(default_factory=ScribeSettings)
    turns: TurnSettings = field(default_factory=TurnSettings)
    speakers: SpeakerSettings = field(default_factory=SpeakerSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    postcall: PostcallSettings = field(default_factory=PostcallSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    summary: SummarySettings = field(default_factory=SummarySettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def replace(self, **sections: Any) -> Settings:
        return dataclasses.replace(self, **sections)


ENV_ALIASES: Mapping[str, tuple[str, str]] = {
    "ELEVENLABS_API_KEY": ("scribe", "api_key"),
    "TWILIO_AUTH_TOKEN": ("twilio", "auth_token"),
    "CALLBRIDGE_STREAM_SECRET": ("twilio", "stream_secret"),
    "CALLBRIDGE_MAX_CALLS": ("limits", "max_calls"),
    "CALLBRIDGE_START_TIMEOUT_S": ("limits", "start_timeout_s"),
    "CALLBRIDGE_MEDIA_TIMEOUT_S": ("limits", "media_timeout_s"),
    "CALLBRIDGE_MAX_CALL_S": ("limits", "max_call_s"),
    "CALLBRIDGE_PUBLIC_URL": ("server", "public_url"),
    "DATABASE_URL": ("database", "url"),
    "CALLBRIDGE_LANGUAGE": ("scribe", "language"),
    "CALLBRIDGE_INBOUND_LABEL": ("speakers", "inbound_label"),
    "CALLBRIDGE_OUTBOUND_LABEL": ("speakers", "outbound_label"),
    "CALLBRIDGE_REDACT": ("redaction", "kinds"),
    "CALLBRIDGE_POSTCALL": ("postcall", "mode"),
    "HOST": ("server", "host"),
    "PORT": ("server", "port"),
}


def env_name(section: str, key: str) -> str:
    """The environment variable a user would set for ``section.key``."""
    for alias, target in ENV_ALIASES.items():
        if target == (section, key):
            return alias
    return f"CALLBRIDGE_{section.upper()}_{key.upper()}"


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _coerce(setting: str, raw: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, list | tuple) and all(isinstance(v, str) for v in raw):
            return tuple(raw)
        raise ConfigError(setting, f"expected a list of strings, got {raw!r}")
    if origin in (types.UnionType, typing.Union):
        return _coerce(setting, raw, str)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if raw not in choices:
            raise ConfigError(setting, f"{raw!r} is not one of {', '.join(map(str, choices))}")
        return raw
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(setting, f"expected true or false, got {raw!r}")
    if annotation is int:
        if isinstance(raw, bool):
            raise ConfigError(setting, f"expected a whole number, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(setting, f"expected a whole number, got {raw!r}") from None
    if annotation is float:
        if isinstance(raw, bool):
            raise ConfigError(setting, f"expected a number, got {raw!r}")
        try:
            return float(str(raw).strip())
        except ValueError:
            raise ConfigError(setting, f"expected a number, got {raw!r}") from None
    if annotation is str:
        if not isinstance(raw, str | int | float):
            raise ConfigError(setting, f"expected text, got {raw!r}")
        return str(raw)
    raise ConfigError(setting, f"unsupported setting type {annotation!r}")


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from defaults, the TOML file and the environment.

    ``path`` (or ``CALLBRIDGE_CONFIG``) names the file; without either,
    ``config/callbridge.toml`` is read if it exists, else only the embedded defaults apply.
    """
    env = dict(os.environ if environ is None else environ)
    explicit = path if path is not None else env.get("CALLBRIDGE_CONFIG") or None
    file_values: dict[str, Any] = {}
    config_path = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    if explicit or config_path.exists():
        try:
            file_values = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("CALLBRIDGE_CONFIG", f"no such file {config_path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("CALLBRIDGE_CONFIG", f"cannot read {config_path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                "CALLBRIDGE_CONFIG", f"{config_path} is not valid TOML: {exc}"
            ) from None

    sections: dict[str, Any] = {}
    for section_name, section_type in _section_types().items():
        hints = typing.get_type_hints(section_type)
        values: dict[str, Any] = {}
        table = file_values.get(section_name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section_name}]", "must be a TOML table")
        known = {f.name for f in dataclasses.fields(section_type)}
        for key in table:
            if (section_name, key) in RETIRED_SETTINGS:
                continue
            if key not in known:
                raise ConfigError(f"{section_name}.{key}", "unknown setting in the config file")
        for f in dataclasses.fields(section_type):
            name = env_name(section_name, f.name)
            if name in env:
                values[f.name] = _coerce(name, env[name], hints[f.name])
            elif f.name in table:
                values[f.name] = _coerce(f"{section_name}.{f.name}", table[f.name], hints[f.name])
        sections[section_name] = section_type(**values)
    for section_name in file_values:
        if section_name not in sections:
            raise ConfigError(f"[{section_name}]", "unknown section in the config file")
    settings = Settings(**sections)
    check_values(settings)
    return settings


def _check_http_url(setting: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(setting, f"{url!r} is not an http(s) URL")


def decode_webhook_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks ``whsec_<base64>`` secret."""
    setting = "CALLBRIDGE_WEBHOOK_SECRET"
    if not secret.startswith("whsec_"):
        raise ConfigError(setting, "must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(setting, "the part after whsec_ is not valid base64") from None
    if len(key) < 16:
        raise ConfigError(setting, "the key is shorter than 16 bytes")
    return key


def check_values(settings: Settings) -> None:
    """Checks that hold for every command: values that are set must make sense."""
    s = settings
    if not 0 < s.server.port < 65536:
        raise ConfigError("PORT", f"{s.server.port} is not a TCP port")
    if s.server.workers < 1:
        raise ConfigError("CALLBRIDGE_SERVER_WORKERS", "must be at least 1")
    if s.server.event_loop not in EVENT_LOOPS:
        raise ConfigError(
            "CALLBRIDGE_SERVER_EVENT_LOOP",
            f"{s.server.event_loop!r} is not {', '.join(EVENT_LOOPS[:-1])} or {EVENT_LOOPS[-1]}",
        )
    if s.server.event_loop == "uvloop" and not uvloop_available():
        raise ConfigError("CALLBRIDGE_SERVER_EVENT_LOOP", "is uvloop, which is not installed")
    if s.server.public_url:
        parts = urlsplit(s.server.public_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(
                "CALLBRIDGE_PUBLIC_URL",
                f"{s.server.public_url!r} must be an http(s) base URL such as https://bridge.example.com",
            )
        if parts.query or parts.fragment:
            raise ConfigError("CALLBRIDGE_PUBLIC_URL", "must not carry a query or fragment")
    limits = s.limits
    if limits.max_calls < 0:
        raise ConfigError("CALLBRIDGE_MAX_CALLS", "must be 0 (no limit) or more")
    for name, value in (
        ("CALLBRIDGE_START_TIMEOUT_S", limits.start_timeout_s),
        ("CALLBRIDGE_MEDIA_TIMEOUT_S", limits.media_timeout_s),
        ("CALLBRIDGE_MAX_CALL_S", limits.max_call_s),
        ("CALLBRIDGE_LIMITS_HEADER_TIMEOUT_S", limits.header_timeout_s),
        ("CALLBRIDGE_LIMITS_BODY_TIMEOUT_S", limits.body_timeout_s),
    ):
        if value <= 0:
            raise ConfigError(name, "must be more than 0")
    if limits.ws_heartbeat_s < 0:
        raise ConfigError("CALLBRIDGE_LIMITS_WS_HEARTBEAT_S", "must be 0 (off) or more")
    if s.server.stream_lease_s <= 0:
        raise ConfigError("CALLBRIDGE_SERVER_STREAM_LEASE_S", "must be more than 0")
    if s.twilio.stream_secret and len(s.twilio.stream_secret) < MIN_STREAM_SECRET_CHARS:
        raise ConfigError(
            "CALLBRIDGE_STREAM_SECRET",
            f"must be at least {MIN_STREAM_SECRET_CHARS} characters (e.g. openssl rand -hex 32)",
        )
    scribe_url = urlsplit(s.scribe.url)
    if scribe_url.scheme not in {"ws", "wss"} or not scribe_url.netloc:
        raise ConfigError("CALLBRIDGE_SCRIBE_URL", f"{s.scribe.url!r} is not a ws(s) URL")
    if not 20 <= s.scribe.chunk_ms <= 1000 or s.scribe.chunk_ms % 20:
        raise ConfigError(
            "CALLBRIDGE_SCRIBE_CHUNK_MS", "must be a multiple of 20 between 20 and 1000"
        )
    if s.twilio.continue_with not in {"pause", "dial", "none"}:
        raise ConfigError(
            "CALLBRIDGE_TWILIO_CONTINUE_WITH",
            f"{s.twilio.continue_with!r} is not pause, dial or none",
        )
    if s.twilio.continue_with == "dial" and not s.twilio.dial_number:
        raise ConfigError("CALLBRIDGE_TWILIO_DIAL_NUMBER", "is required when continue_with is dial")
    t = s.turns
    if not 0 < t.soft_max_segment_ms < t.max_segment_ms <= 80000:
        raise ConfigError(
            "CALLBRIDGE_TURNS_MAX_SEGMENT_MS",
            "need 0 < soft_max_segment_ms < max_segment_ms <= 80000 (Scribe auto-commits at 90 s)",
        )
    if t.turn_end_ms < t.vad_hangover_ms:
        raise ConfigError(
            "CALLBRIDGE_TURNS_TURN_END_MS", "must not be shorter than vad_hangover_ms"
        )
    if t.catchup_speed < 1.0:
        raise ConfigError("CALLBRIDGE_TURNS_CATCHUP_SPEED", "must be at least 1.0")
    for url in s.webhook.urls:
        _check_http_url("CALLBRIDGE_WEBHOOK_URLS", url)
    if s.webhook.secret:
        decode_webhook_secret(s.webhook.secret)
    _check_summary(s.summary)
    try:
        database_backend(s.database.url)
    except ValueError as exc:
        raise ConfigError("DATABASE_URL", str(exc)) from None
    for key in ("events_poll_s", "events_heartbeat_s", "events_write_timeout_s"):
        if not getattr(s.api, key) > 0:
            raise ConfigError(env_name("api", key), "must be more than 0")
    if s.api.events_buffer < 1:
        raise ConfigError("CALLBRIDGE_API_EVENTS_BUFFER", "must be at least 1")
    if not 1 <= s.database.pool_size <= 1000:
        raise ConfigError("CALLBRIDGE_DATABASE_POOL_SIZE", "must be a whole number from 1 to 1000")
    try:
        parse_kinds(s.redaction.kinds)
    except ValueError as exc:
        raise ConfigError("CALLBRIDGE_REDACT", str(exc)) from None
    if not 0 <= s.redaction.hold_ms <= MAX_REDACTION_HOLD_MS:
        raise ConfigError(
            "CALLBRIDGE_REDACTION_HOLD_MS",
            f"must be from 0 to {MAX_REDACTION_HOLD_MS} (a segment must reach receivers "
            "within 4 s of its speech)",
        )
    p = s.postcall
    if p.mode not in ("off", "batch"):
        raise ConfigError("CALLBRIDGE_POSTCALL", f"{p.mode!r} is not off or batch")
    _check_http_url("CALLBRIDGE_SCRIBE_BATCH_URL", s.scribe.batch_url)
    if s.scribe.batch_transcripts_url:
        _check_http_url("CALLBRIDGE_SCRIBE_BATCH_TRANSCRIPTS_URL", s.scribe.batch_transcripts_url)
        if "{transcription_id}" not in s.scribe.batch_transcripts_url:
            raise ConfigError(
                "CALLBRIDGE_SCRIBE_BATCH_TRANSCRIPTS_URL", "must contain {transcription_id}"
            )
    if p.send not in ("speech", "all"):
        raise ConfigError("CALLBRIDGE_POSTCALL_SEND", f"{p.send!r} is not speech or all")
    for key in ("concurrency", "max_audio_mb"):
        if getattr(p, key) < 1:
            raise ConfigError(env_name("postcall", key), "must be at least 1")
    for key in ("timeout_s", "retry_for_s", "backoff_initial_s", "backoff_max_s"):
        if not getattr(p, key) > 0:
            raise ConfigError(env_name("postcall", key), "must be more than 0")
    if s.jobs.poll_interval_s <= 0:
        raise ConfigError("CALLBRIDGE_JOBS_POLL_INTERVAL_S", "must be more than 0")
    if s.logging.format not in {"auto", "json", "console"}:
        raise ConfigError("CALLBRIDGE_LOGGING_FORMAT", "must be auto, json or console")


MIN_INPUT_BUDGET_TOKENS = 1000


def _check_summary(summary: SummarySettings) -> None:
    if not summary.enabled:
        return
    _check_http_url("CALLBRIDGE_SUMMARY_LLM_URL", summary.llm_url)
    if not summary.llm_model.strip():
        raise ConfigError(
            "CALLBRIDGE_SUMMARY_LLM_MODEL",
            "is not set; the AI summary (CALLBRIDGE_SUMMARY_LLM_URL) needs the model's name",
        )
    if summary.llm_structured_output not in {"auto", "json_schema", "json_object", "none"}:
        raise ConfigError(
            "CALLBRIDGE_SUMMARY_LLM_STRUCTURED_OUTPUT",
            f"{summary.llm_structured_output!r} is not auto, json_schema, json_object or none",
        )
    if not summary.llm_timeout_s > 0:
        raise ConfigError("CALLBRIDGE_SUMMARY_LLM_TIMEOUT_S", "must be more than 0")
    if summary.llm_temperature > 2:
        raise ConfigError(
            "CALLBRIDGE_SUMMARY_LLM_TEMPERATURE", "must be at most 2 (below 0: not sent)"
        )
    if summary.llm_max_output_tokens < 256:
        raise ConfigError("CALLBRIDGE_SUMMARY_LLM_MAX_OUTPUT_TOKENS", "must be at least 256")
    if summary.llm_input_budget_tokens < MIN_INPUT_BUDGET_TOKENS:
        raise ConfigError(
            "CALLBRIDGE_SUMMARY_LLM_INPUT_BUDGET_TOKENS",
            f"must be at least {MIN_INPUT_BUDGET_TOKENS} (the instructions alone take about 400)",
        )
    if summary.concurrency < 1:
        raise ConfigError("CALLBRIDGE_SUMMARY_CONCURRENCY", "must be at least 1")
    if summary.retry_for_s < 0:
        raise ConfigError("CALLBRIDGE_SUMMARY_RETRY_FOR_S", "must not be negative")
    if not 0 < summary.backoff_initial_s <= summary.backoff_max_s:
        raise ConfigError(
            "CALLBRIDGE_SUMMARY_BACKOFF_INITIAL_S",
            "need 0 < backoff_initial_s <= backoff_max_s",
        )


def check_serve(settings: Settings) -> None:
    """The settings ``callbridge serve`` cannot run without."""
    if not settings.scribe.api_key:
        raise ConfigError(
            "ELEVENLABS_API_KEY", "is not set; the bridge needs it to open Scribe sessions"
        )
    if not settings.server.public_url:
        raise ConfigError(
            "CALLBRIDGE_PUBLIC_URL",
            "is not set; it builds the <Stream url> and the URLs Twilio signatures are "
            "checked against",
        )
    if settings.twilio.validate and not settings.twilio.auth_token:
        raise ConfigError(
            "TWILIO_AUTH_TOKEN",
            "is not set; it validates X-Twilio-Signature "
            "(CALLBRIDGE_TWILIO_VALIDATE=false turns the checks off)",
        )
    if settings.postcall.enabled:
        folder = Path(settings.postcall.audio_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                "CALLBRIDGE_POSTCALL_AUDIO_DIR", f"cannot create {folder}: {exc.strerror}"
            ) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(
                "CALLBRIDGE_POSTCALL_AUDIO_DIR", f"{folder} is not writable; call audio waits there"
            )


def with_stream_secret(settings: Settings) -> tuple[Settings, bool]:
    """The settings with a stream secret: the configured one, else a random one (True).

    A random secret is right for one machine (``serve --workers`` passes it to every worker)
    but not for several instances, which must share ``CALLBRIDGE_STREAM_SECRET``."""
    if settings.twilio.stream_secret:
        return settings, False
    twilio = dataclasses.replace(settings.twilio, stream_secret=secrets.token_hex(32))
    return settings.replace(twilio=twilio), True


def redacted(settings: Settings) -> dict[str, dict[str, Any]]:
    """The settings as a dict for logs, with every secret masked (:mod:`callbridge.masking`):
    a text setting whose name says it is a secret (``api_key``, ``auth_token``,
    ``shared_keys``, ``stream_secret``, ``secret``, ``tokens``, ``llm_key`` …) as ``***``, and
    the credentials inside every URL (user information, query values)."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(settings):
        values = dataclasses.asdict(getattr(settings, section.name))
        for key, value in values.items():
            textual = isinstance(value, str) or (
                isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            )
            if not textual or not value:
                continue
            if is_secret_name(key):
                values[key] = MASK
            elif isinstance(value, str):
                values[key] = mask_url(value)
            else:
                values[key] = tuple(mask_url(v) for v in value)
        out[section.name] = values
    return out
