"""Twilio request signatures: ``X-Twilio-Signature`` on webhooks and on the media websocket.

This module owns how callbridge decides that a request really comes from Twilio:

* the URL Twilio signed is rebuilt from the configured public base URL, never from
  ``request.url`` (which is ``http://internal:port/…`` behind a TLS-terminating proxy);
* form webhooks are checked with their POST parameters (multi-valued keys included);
* JSON webhooks are checked through the ``bodySHA256`` query parameter;
* the websocket upgrade is checked against ``wss://<public host><path>`` with no params;
* SharedKey signing (``X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=HMAC_SHA256``)
  picks the secret named by the key id; an unknown key id is invalid.

The HMAC and its constant-time comparison are twilio-python's ``RequestValidator``; its
port quirk (it tries the URL with and without the default port) is relied upon.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import RequestValidator, get_signature_algorithm

from callbridge.config import ConfigError, Settings
from callbridge.twilio.paths import MEDIA_PATH

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"

_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def parse_shared_keys(pairs: Iterable[str]) -> dict[str, str]:
    """``TwilioSettings.shared_keys`` (``"KEY_ID:SECRET"`` pairs) → ``{key_id: secret}``."""
    keys: dict[str, str] = {}
    for pair in pairs:
        key_id, separator, secret = pair.partition(":")
        if not separator or not key_id.strip() or not secret:
            raise ConfigError("CALLBRIDGE_TWILIO_SHARED_KEYS", "each entry must be KEY_ID:SECRET")
        keys[key_id.strip()] = secret
    return keys


def public_base(public_url: str) -> str:
    """The public base URL without a trailing slash (``https://bridge.example.com/prefix``)."""
    return public_url.rstrip("/")


def websocket_base(public_url: str) -> str:
    """The public base as a websocket URL: ``https`` → ``wss``, ``http`` → ``ws`` (dev only)."""
    base = public_base(public_url)
    scheme, separator, rest = base.partition("://")
    if not separator:
        raise ValueError(f"public URL {public_url!r} has no scheme")
    ws_scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(scheme.lower())
    if ws_scheme is None:
        raise ValueError(f"public URL {public_url!r} is not http(s)")
    return f"{ws_scheme}://{rest}"


def _join(base: str, path: str) -> str:
    """``base`` + ``path``, without doubling a path prefix the proxy already forwarded."""
    prefix = urlsplit(base).path.rstrip("/")
    if prefix and (
        path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?")
    ):
        return base[: len(base) - len(prefix)] + path
    return base + path


def public_websocket_url(public_url: str, path: str = MEDIA_PATH) -> str:
    """The URL Twilio signs on the media websocket upgrade: ``wss://<public host><path>``."""
    return _join(websocket_base(public_url), path)


class TwilioSignatureChecker:
    """Validates ``X-Twilio-Signature`` against the configured public URL.

    ``shared_keys`` maps SharedKey ids to their secrets. With ``enabled=False`` every check
    passes (the caller logs the start-up warning).
    """

    def __init__(
        self,
        auth_token: str,
        public_url: str,
        shared_keys: Mapping[str, str] | None = None,
        enabled: bool = True,
    ) -> None:
        if enabled and not auth_token:
            raise ConfigError("TWILIO_AUTH_TOKEN", "is required to validate Twilio signatures")
        if enabled and not public_url:
            raise ConfigError("CALLBRIDGE_PUBLIC_URL", "is required to validate Twilio signatures")
        self.enabled = enabled
        self._public_base = public_base(public_url) if public_url else ""
        self._auth_validator = RequestValidator(auth_token)
        self._shared_validators = {
            key_id: RequestValidator(secret) for key_id, secret in (shared_keys or {}).items()
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioSignatureChecker:
        twilio = settings.twilio
        return cls(
            auth_token=twilio.auth_token,
            public_url=settings.server.public_url,
            shared_keys=parse_shared_keys(twilio.shared_keys),
            enabled=twilio.validate,
        )

    # URLs -------------------------------------------------------------------
    def public_url_for(self, request: web.BaseRequest) -> str:
        """The URL Twilio requested: the configured public base + the request's path and query."""
        return _join(self._public_base, self._request_target(request))

    def websocket_url_for(self, request: web.BaseRequest) -> str:
        """The URL Twilio signed on a websocket upgrade: ``wss://<public host><path>``."""
        return public_websocket_url(self._public_base, request.path)

    @staticmethod
    def _request_target(request: web.BaseRequest) -> str:
        # raw_path keeps the percent-encoding exactly as Twilio sent it (path_qs normalises
        # %7E to ~ and so on, which would change the signed string).
        raw = request.raw_path
        return raw if raw.startswith("/") else request.path_qs

    # checks -------------------------------------------------------------------
    def _validator_for(self, request: web.BaseRequest) -> tuple[RequestValidator, str] | None:
        """The validator and algorithm the request's headers call for; None if unknown."""
        settings_header = request.headers.get(SIGNATURE_SETTINGS_HEADER, "")
        algorithm = get_signature_algorithm(settings_header)
        key_id = _header_value(settings_header, "key")
        if key_id is None:
            return self._auth_validator, algorithm
        validator = self._shared_validators.get(key_id)
        if validator is None:
            log.warning("twilio.signature_unknown_shared_key", key_id=key_id, path=request.path)
            return None
        return validator, algorithm

    def _validate(self, request: web.BaseRequest, url: str, params: Any) -> bool:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            log.warning("twilio.signature_missing", path=request.path)
            return False
        chosen = self._validator_for(request)
        if chosen is None:
            return False
        validator, algorithm = chosen
        try:
            valid = bool(validator.validate(url, params, signature, algorithm))
        except (TypeError, ValueError, UnicodeError):
            # A str body without bodySHA256 in the URL raises TypeError inside the SDK.
            valid = False
        if not valid:
            log.warning("twilio.signature_invalid", path=request.path, url=url)
        return valid

    async def check_form_request(self, request: web.BaseRequest) -> MultiDictProxy[str] | None:
        """Read the form once and validate the signature; the form on success, else None.

        Form bodies are validated with their parameters (every value of a multi-valued key).
        A JSON body is validated through ``bodySHA256`` in the URL; on success its
        parameters are the query's (a JSON webhook carries none of the form fields).
        """
        url = self.public_url_for(request)
        content_type = request.content_type
        if request.method == "GET" or content_type in _FORM_TYPES or not request.can_read_body:
            form = await _read_form(request)
            if form is None:
                return None
            if self.enabled and not self._validate(request, url, form):
                return None
            return form
        body = await request.text()
        if self.enabled:
            if "bodySHA256" not in parse_qs(urlsplit(url).query):
                log.warning(
                    "twilio.signature_unsupported_body",
                    path=request.path,
                    content_type=content_type,
                )
                return None
            if not self._validate(request, url, body):
                return None
        return MultiDictProxy(MultiDict(request.query))

    def check_websocket(self, request: web.BaseRequest) -> bool:
        """Validate the media websocket upgrade; call before ``ws.prepare()``."""
        if not self.enabled:
            return True
        return self._validate(request, self.websocket_url_for(request), {})


def _header_value(header: str, name: str) -> str | None:
    """``name`` from ``key=…,algorithm=…``; None if absent or empty."""
    for part in header.split(","):
        key, separator, value = part.partition("=")
        if separator and key.strip().lower() == name and value.strip():
            return value.strip()
    return None


async def _read_form(request: web.BaseRequest) -> MultiDictProxy[str] | None:
    """The POST parameters (GET: none); None if the body is not a text form."""
    if request.method == "GET":
        return MultiDictProxy(MultiDict[str]())
    try:
        posted = await request.post()
    except ValueError:
        log.warning("twilio.form_unreadable", path=request.path)
        return None
    form = MultiDict[str]()
    for key, value in posted.items():
        if not isinstance(value, str):
            log.warning("twilio.form_file_field", path=request.path, field=key)
            return None
        form.add(key, value)
    return MultiDictProxy(form)


# The app's one checker: the webhooks check their forms with it, the media route its upgrade.
SIGNATURE_CHECKER = web.AppKey("twilio_signature_checker", TwilioSignatureChecker)
