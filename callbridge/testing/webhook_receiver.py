"""A real local webhook receiver for tests, benchmarks and the demo.

It listens on 127.0.0.1 (or ``host``), records every request (headers, body, parsed JSON,
arrival time, the sender's address), checks Standard Webhooks signatures itself when given
the secret, and answers as scripted: a queue of :class:`Reply` values (e.g. ``500`` three
times, a ``Retry-After``, a ``400``, a slow answer, a redirect), then a default reply, or a
callable that decides per request.

    async with WebhookReceiver(secret=secret) as receiver:
        receiver.reply(Reply(500), Reply(500))  # then 200s
        ...  # point CALLBRIDGE_WEBHOOK_URLS at receiver.url
        await receiver.wait_for(3, timeout=5)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from callbridge.config import decode_webhook_secret
from callbridge.testing.local_server import LocalHttpServer
from callbridge.webhooks.signing import verify


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer. ``delay_s`` waits before answering (a slow target)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status=status, headers={"Location": location})

    @classmethod
    def retry_after(cls, seconds: int | str, status: int = 429) -> Reply:
        return cls(status=status, headers={"Retry-After": str(seconds)})


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any  # None when the body is not JSON
    received_at: float  # time.time()
    received_monotonic: float  # time.perf_counter()
    signature_valid: bool | None  # None when the receiver has no secret
    status: int  # what the receiver answered
    remote: str | None = None  # the sender's address

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")

    @property
    def event_type(self) -> str | None:
        return self.json.get("type") if isinstance(self.json, dict) else None

    @property
    def data(self) -> dict[str, Any]:
        data = self.json.get("data") if isinstance(self.json, dict) else None
        return data if isinstance(data, dict) else {}


Responder = Callable[[ReceivedRequest], Reply | Awaitable[Reply]]


class WebhookReceiver(LocalHttpServer):
    """A local HTTP server that records webhook requests. ``port=0`` picks a free port;
    ``host`` is the address it listens on (and puts in :attr:`url`)."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/hooks",
        default: Reply | None = None,
    ) -> None:
        super().__init__(port, host)
        self._key = decode_webhook_secret(secret) if secret else None
        self._path = path
        self._default = default or Reply()
        self._script: deque[Reply] = deque()
        self._responder: Responder | None = None
        self.requests: list[ReceivedRequest] = []
        self.in_progress = 0  # requests being answered right now
        self.max_concurrent = 0  # the most ever answered at once
        self._changed = asyncio.Condition()

    # scripting ------------------------------------------------------------------------------

    def reply(self, *replies: Reply | int) -> None:
        """Queue answers for the next requests (ints are status codes)."""
        for item in replies:
            self._script.append(Reply(item) if isinstance(item, int) else item)

    def set_default(self, reply: Reply | int) -> None:
        self._default = Reply(reply) if isinstance(reply, int) else reply

    def set_responder(self, responder: Responder | None) -> None:
        """Decide every answer with a callable (overrides the queue and the default)."""
        self._responder = responder

    # lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}{self._path}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # recording ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_progress += 1
        self.max_concurrent = max(self.max_concurrent, self.in_progress)
        try:
            return await self._answer(request)
        finally:
            self.in_progress -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        arrived, arrived_monotonic = time.time(), time.perf_counter()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        headers = {key.lower(): value for key, value in request.headers.items()}
        valid: bool | None = None
        if self._key is not None:
            valid = verify(
                self._key,
                headers.get("webhook-id", ""),
                headers.get("webhook-timestamp", ""),
                body,
                headers.get("webhook-signature", ""),
            )
        provisional = ReceivedRequest(
            method=request.method,
            path=request.path,
            headers=headers,
            body=body,
            json=parsed,
            received_at=arrived,
            received_monotonic=arrived_monotonic,
            signature_valid=valid,
            status=0,
            remote=request.remote,
        )
        reply = await self._choose(provisional)
        record = dataclasses.replace(provisional, status=reply.status)
        async with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return web.Response(status=reply.status, headers=dict(reply.headers), body=reply.body)

    async def _choose(self, request: ReceivedRequest) -> Reply:
        if self._responder is not None:
            chosen = self._responder(request)
            return await chosen if isinstance(chosen, Awaitable) else chosen
        if self._script:
            return self._script.popleft()
        return self._default

    async def wait_for(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
        predicate: Callable[[ReceivedRequest], bool] | None = None,
    ) -> list[ReceivedRequest]:
        """Wait until ``count`` requests (matching ``predicate``) arrived; returns them.

        Raises ``TimeoutError`` naming how many arrived.
        """

        def matching() -> list[ReceivedRequest]:
            return [r for r in self.requests if predicate is None or predicate(r)]

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(matching()) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"webhook receiver: {len(matching())} of {count} requests after {timeout} s"
            ) from None
        return matching()

    def delivered(self) -> list[ReceivedRequest]:
        """The requests answered with 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]
