"""A local aiohttp server on 127.0.0.1 for the test doubles that speak HTTP.

Subclasses build their :class:`aiohttp.web.Application` in :meth:`LocalHttpServer.make_app`;
this class runs it on ``host`` (127.0.0.1 by default) and ``port`` (0 picks a free one,
readable from :attr:`port` once started) and is an async context manager.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web


@dataclass(frozen=True, slots=True)
class HttpFault:
    """One fault a test double injects into an answer (build them with the class methods);
    each double adds the faults of its own protocol and answers them in its own format."""

    kind: str
    status: int = 0
    retry_after: str | None = None
    delay_s: float = 0.0

    @classmethod
    def rate_limit(cls, retry_after: str | None = "1") -> Self:
        """``429`` with ``Retry-After`` (seconds or an HTTP date; None leaves it out)."""
        return cls("rate_limit", status=429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> Self:
        return cls("server_error", status=status)

    @classmethod
    def slow(cls, delay_s: float) -> Self:
        """Answer normally after ``delay_s`` (a client timeout shorter than it fires)."""
        return cls("slow", delay_s=delay_s)

    @classmethod
    def disconnect(cls) -> Self:
        """Close the connection without answering."""
        return cls("disconnect")


class LocalHttpServer:
    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server
        if self._port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self._port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
