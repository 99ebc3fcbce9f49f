"""X-Twilio-Signature checks: webhooks, JSON bodies, the websocket upgrade, SharedKey, proxies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from twilio.request_validator import HMAC_SHA256

from callbridge.config import ConfigError, ServerSettings, Settings, TwilioSettings
from callbridge.testing.twilio_simulator import sign_request
from callbridge.twilio.signatures import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    TwilioSignatureChecker,
    parse_shared_keys,
    public_websocket_url,
)

DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

Client = TestClient[web.Request, web.Application]

TOKEN = "test-auth-token"
PUBLIC = "https://bridge.example.com"
WSS_URL = "wss://bridge.example.com/twilio/media"


def test_docs_test_vector() -> None:
    assert sign_request(DOC_TOKEN, DOC_URL, DOC_PARAMS) == DOC_SIGNATURE


def _checker_app(checker: TwilioSignatureChecker) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        form = await checker.check_form_request(request)
        if form is None:
            return web.json_response({"valid": False}, status=403)
        return web.json_response({"valid": True, "form": [[k, v] for k, v in form.items()]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
async def doc_client() -> AsyncIterator[Client]:
    checker = TwilioSignatureChecker(DOC_TOKEN, "https://mycompany.com")
    async with TestClient(TestServer(_checker_app(checker))) as client:
        yield client


async def test_form_request_valid_behind_proxy(doc_client: Client) -> None:
    # The request reaches the app as http://127.0.0.1:<port>/… — the public URL is what counts.
    response = await doc_client.post(
        "/myapp.php?foo=1&bar=2", data=DOC_PARAMS, headers={SIGNATURE_HEADER: DOC_SIGNATURE}
    )
    assert response.status == 200
    body = await response.json()
    assert body["valid"] is True
    assert dict(body["form"]) == DOC_PARAMS


@pytest.mark.parametrize(
    "headers", [{}, {SIGNATURE_HEADER: ""}, {SIGNATURE_HEADER: "AAAA" + DOC_SIGNATURE[4:]}]
)
async def test_form_request_missing_or_wrong_signature(
    doc_client: Client, headers: dict[str, str]
) -> None:
    response = await doc_client.post("/myapp.php?foo=1&bar=2", data=DOC_PARAMS, headers=headers)
    assert response.status == 403


async def test_form_request_tampered_param(doc_client: Client) -> None:
    tampered = {**DOC_PARAMS, "Digits": "9999"}
    response = await doc_client.post(
        "/myapp.php?foo=1&bar=2", data=tampered, headers={SIGNATURE_HEADER: DOC_SIGNATURE}
    )
    assert response.status == 403


async def test_form_request_multi_valued_keys() -> None:
    checker = TwilioSignatureChecker(TOKEN, PUBLIC)
    pairs = [("CallSid", "CA1"), ("Tag", "b"), ("Tag", "a")]
    signature = sign_request(TOKEN, PUBLIC + "/hook", pairs)
    async with TestClient(TestServer(_checker_app(checker))) as client:
        ok = await client.post("/hook", data=pairs, headers={SIGNATURE_HEADER: signature})
        assert ok.status == 200
        assert (await ok.json())["form"] == [["CallSid", "CA1"], ["Tag", "b"], ["Tag", "a"]]
        dropped = await client.post("/hook", data=pairs[:2], headers={SIGNATURE_HEADER: signature})
        assert dropped.status == 403


async def test_port_quirk_on_webhooks() -> None:
    # Twilio may sign with or without :443; both validate whichever the public URL says.
    for public, signed_url in [
        ("https://bridge.example.com:443", PUBLIC + "/hook"),
        (PUBLIC, "https://bridge.example.com:443/hook"),
    ]:
        checker = TwilioSignatureChecker(TOKEN, public)
        signature = sign_request(TOKEN, signed_url, {"CallSid": "CA1"})
        async with TestClient(TestServer(_checker_app(checker))) as client:
            response = await client.post(
                "/hook", data={"CallSid": "CA1"}, headers={SIGNATURE_HEADER: signature}
            )
            assert response.status == 200, public


async def test_json_body_with_body_sha256() -> None:
    checker = TwilioSignatureChecker(TOKEN, PUBLIC)
    body = json.dumps({"CallSid": "CA1", "event": "x"})
    digest = hashlib.sha256(body.encode()).hexdigest()
    path = f"/hook?bodySHA256={digest}"
    signature = sign_request(TOKEN, PUBLIC + path, None)
    headers = {SIGNATURE_HEADER: signature, "Content-Type": "application/json"}
    async with TestClient(TestServer(_checker_app(checker))) as client:
        ok = await client.post(path, data=body, headers=headers)
        assert ok.status == 200
        tampered = await client.post(path, data=body.replace("x", "y"), headers=headers)
        assert tampered.status == 403
        # No bodySHA256 in the URL: the SDK would raise TypeError; we reject cleanly.
        no_hash = await client.post(
            "/hook",
            data=body,
            headers={
                SIGNATURE_HEADER: sign_request(TOKEN, PUBLIC + "/hook", None),
                "Content-Type": "application/json",
            },
        )
        assert no_hash.status == 403


def _ws_request(headers: dict[str, str], path: str = "/twilio/media") -> web.Request:
    return make_mocked_request(
        "GET",
        path,
        headers={
            "Host": "10.0.0.7:8080",  # what the proxy forwards, not the public host
            "X-Forwarded-Proto": "https",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            **headers,
        },
    )


def test_websocket_signed_url_comes_from_public_base() -> None:
    checker = TwilioSignatureChecker(TOKEN, PUBLIC)
    good = sign_request(TOKEN, WSS_URL, {})
    assert checker.websocket_url_for(_ws_request({})) == WSS_URL
    assert checker.check_websocket(_ws_request({SIGNATURE_HEADER: good}))
    # Signed for what the bridge sees locally, or for https instead of wss: invalid.
    for wrong_url in ["ws://10.0.0.7:8080/twilio/media", "https://bridge.example.com/twilio/media"]:
        assert not checker.check_websocket(
            _ws_request({SIGNATURE_HEADER: sign_request(TOKEN, wrong_url, {})})
        )
    assert not checker.check_websocket(_ws_request({}))
    assert not checker.check_websocket(_ws_request({SIGNATURE_HEADER: "bogus"}))


def test_websocket_port_quirk_and_dev_scheme() -> None:
    with_port = TwilioSignatureChecker(TOKEN, "https://bridge.example.com:443/")
    assert with_port.check_websocket(
        _ws_request({SIGNATURE_HEADER: sign_request(TOKEN, WSS_URL, {})})
    )
    dev = TwilioSignatureChecker(TOKEN, "http://localhost:8080")
    url = "ws://localhost:8080/twilio/media"
    assert public_websocket_url("http://localhost:8080") == url
    assert dev.check_websocket(_ws_request({SIGNATURE_HEADER: sign_request(TOKEN, url, {})}))


def test_public_base_with_path_prefix() -> None:
    checker = TwilioSignatureChecker(TOKEN, "https://example.com/bridge")
    url = "wss://example.com/bridge/twilio/media"
    signature = {SIGNATURE_HEADER: sign_request(TOKEN, url, {})}
    assert checker.check_websocket(_ws_request(signature))  # proxy stripped the prefix
    assert checker.check_websocket(_ws_request(signature, "/bridge/twilio/media"))  # or kept it


def test_shared_key_hmac_sha256() -> None:
    checker = TwilioSignatureChecker(TOKEN, PUBLIC, shared_keys={"KEY1": "shared-secret"})
    settings = {SIGNATURE_SETTINGS_HEADER: f"key=KEY1,algorithm={HMAC_SHA256}"}
    signature = sign_request("shared-secret", WSS_URL, {}, algorithm=HMAC_SHA256)
    assert checker.check_websocket(_ws_request({SIGNATURE_HEADER: signature, **settings}))
    # Unknown key id → invalid, even with a correct HMAC.
    unknown = {SIGNATURE_SETTINGS_HEADER: f"key=KEY2,algorithm={HMAC_SHA256}"}
    assert not checker.check_websocket(_ws_request({SIGNATURE_HEADER: signature, **unknown}))
    # The auth token's SHA1 signature does not pass under a SharedKey header.
    sha1 = sign_request(TOKEN, WSS_URL, {})
    assert not checker.check_websocket(_ws_request({SIGNATURE_HEADER: sha1, **settings}))
    # Unsupported algorithm → invalid.
    odd = {SIGNATURE_SETTINGS_HEADER: "key=KEY1,algorithm=HMAC_MD5"}
    assert not checker.check_websocket(_ws_request({SIGNATURE_HEADER: signature, **odd}))


async def test_shared_key_on_form_webhook() -> None:
    checker = TwilioSignatureChecker(TOKEN, PUBLIC, shared_keys={"KEY1": "shared-secret"})
    params = {"CallSid": "CA1", "CallStatus": "completed"}
    signature = sign_request("shared-secret", PUBLIC + "/hook", params, algorithm=HMAC_SHA256)
    headers = {
        SIGNATURE_HEADER: signature,
        SIGNATURE_SETTINGS_HEADER: "key=KEY1,algorithm=HMAC_SHA256",
    }
    async with TestClient(TestServer(_checker_app(checker))) as client:
        assert (await client.post("/hook", data=params, headers=headers)).status == 200


async def test_disabled_checker_passes_everything() -> None:
    checker = TwilioSignatureChecker("", "", enabled=False)
    assert checker.check_websocket(_ws_request({}))
    async with TestClient(TestServer(_checker_app(checker))) as client:
        response = await client.post("/hook", data={"CallSid": "CA1"})
        assert response.status == 200


def test_from_settings_and_shared_key_parsing() -> None:
    assert parse_shared_keys(["K1:s:with:colons", " K2 :x"]) == {"K1": "s:with:colons", "K2": "x"}
    with pytest.raises(ConfigError):
        parse_shared_keys(["no-secret"])
    settings = Settings(
        server=ServerSettings(public_url=PUBLIC),
        twilio=TwilioSettings(auth_token=TOKEN, shared_keys=("K1:secret",)),
    )
    checker = TwilioSignatureChecker.from_settings(settings)
    assert checker.enabled
    signature = sign_request("secret", WSS_URL, {}, algorithm=HMAC_SHA256)
    headers = {
        SIGNATURE_HEADER: signature,
        SIGNATURE_SETTINGS_HEADER: "key=K1,algorithm=HMAC_SHA256",
    }
    assert checker.check_websocket(_ws_request(headers))
    with pytest.raises(ConfigError):
        TwilioSignatureChecker("", PUBLIC)
