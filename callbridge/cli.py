"""The ``callbridge`` command line.

Every subcommand registers a ``handler(args) -> int``; a bad setting or a store that
cannot be opened ends the command with one line on stderr naming the setting, and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from callbridge import __version__, event_loop
from callbridge.cli_calls import add_calls_commands
from callbridge.config import (
    ConfigError,
    Settings,
    check_serve,
    load_settings,
    with_stream_secret,
)
from callbridge.logs import configure_logging
from callbridge.metrics.multiprocess import MetricsDirectory, multiprocess_dir
from callbridge.store.base import StoreError
from callbridge.twilio.stream_auth import TOKEN_PARAMETER, stream_token


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def run_serve(args: argparse.Namespace) -> int:
    from callbridge.app import serve

    settings = _load(args)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    if overrides:
        settings = settings.replace(server=dataclasses.replace(settings.server, **overrides))
    check_serve(settings)
    configure_logging(settings.logging.format, settings.logging.level)
    settings, random_secret = with_stream_secret(settings)
    if random_secret:
        structlog.get_logger("callbridge.cli").warning(
            "stream.secret_random",
            setting="CALLBRIDGE_STREAM_SECRET",
            detail="stream tokens use a random secret made at start-up and shared by this "
            "server's workers: right for one machine, wrong for several instances (they must "
            "share one secret), and TwiML made elsewhere cannot compute the tokens",
        )
    if settings.server.workers > 1:
        from callbridge.workers import serve_workers

        return serve_workers(settings)
    if settings.metrics.enabled and multiprocess_dir() is not None:
        MetricsDirectory.prepare()  # a directory named for one process: empty it first
    event_loop.run(serve(settings), settings.server.event_loop)
    return 0


def run_stream_token(args: argparse.Namespace) -> int:
    """Print the ``cb_token`` of one call, for TwiML made outside the bridge."""
    secret = _load(args).twilio.stream_secret
    if not secret:
        raise ConfigError(
            "CALLBRIDGE_STREAM_SECRET",
            "is not set; a token can only be computed with the secret the bridge uses",
        )
    print(stream_token(secret, args.account_sid, args.call_sid))
    return 0


def run_emulator(args: argparse.Namespace) -> int:
    from callbridge.testing.scribe_emulator import main as emulator_main

    forwarded = ["--port", str(args.port), "--api-key", args.api_key]
    forwarded += ["--transcriber", args.transcriber]
    emulator_main(forwarded)
    return 0


def run_llm_emulator(args: argparse.Namespace) -> int:
    from callbridge.testing.llm_emulator import main as emulator_main

    forwarded = ["--port", str(args.port), "--api-key", args.api_key]
    for model in args.model or []:
        forwarded += ["--model", model]
    emulator_main(forwarded)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callbridge",
        description="Live phone-call transcription: Twilio Media Streams to ElevenLabs Scribe.",
    )
    parser.add_argument("--version", action="version", version=f"callbridge {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="TOML settings file (default: $CALLBRIDGE_CONFIG, else config/callbridge.toml)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the bridge (needs ELEVENLABS_API_KEY, TWILIO_AUTH_TOKEN, CALLBRIDGE_PUBLIC_URL)",
    )
    serve.add_argument("--host", default=None, help="listen address (HOST)")
    serve.add_argument("--port", type=int, default=None, help="listen port (PORT)")
    serve.add_argument(
        "--workers", type=int, default=None, help="processes sharing the port (SO_REUSEPORT)"
    )
    serve.set_defaults(handler=run_serve)

    token = commands.add_parser(
        "stream-token",
        help=f'print a call\'s stream token (<Parameter name="{TOKEN_PARAMETER}">) for TwiML made '
        "elsewhere (needs CALLBRIDGE_STREAM_SECRET)",
    )
    token.add_argument("--account-sid", required=True, help="the call's AccountSid (AC…)")
    token.add_argument("--call-sid", required=True, help="the call's CallSid (CA…)")
    token.set_defaults(handler=run_stream_token)

    emulator = commands.add_parser(
        "emulate-scribe", help="run the bundled Scribe realtime emulator (for local testing)"
    )
    emulator.add_argument("--port", type=int, default=8765)
    emulator.add_argument("--api-key", default="test-key")
    emulator.add_argument("--transcriber", choices=("duration", "tones"), default="duration")
    emulator.set_defaults(handler=run_emulator)

    llm = commands.add_parser(
        "emulate-llm",
        help="run the bundled OpenAI-compatible LLM emulator (AI summaries, local testing)",
    )
    llm.add_argument("--port", type=int, default=8766)
    llm.add_argument("--api-key", default="sk-emulated-test-key", help="empty: accept any key")
    llm.add_argument(
        "--model",
        action="append",
        help="a model it serves (repeat; default: callbridge-emulated-llm)",
    )
    llm.set_defaults(handler=run_llm_emulator)

    add_calls_commands(commands)
    from callbridge.demo import add_demo_command
    from callbridge.simulate import add_simulate_command

    add_demo_command(commands)
    add_simulate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Logs go to stderr (quiet) until a command configures them its own way.
    configure_logging("auto", "warning")
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as exc:
        print(f"callbridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"callbridge: database error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"callbridge: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
