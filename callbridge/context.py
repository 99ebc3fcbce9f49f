"""Typed keys for what the aiohttp application carries, shared by every route module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from callbridge.api.live_feed import LiveFeed
from callbridge.call.event_writer import EventWriters
from callbridge.call.live_calls import LiveCallRegistry
from callbridge.call.sink import CallEventSink
from callbridge.call.stream_claims import StreamClaims
from callbridge.config import Settings
from callbridge.jobs.runner import JobRunner
from callbridge.metrics.definitions import BridgeMetrics
from callbridge.models import EndReason
from callbridge.postcall.audio_spool import AudioSpool
from callbridge.store.base import DurableStore
from callbridge.webhooks.sink import AfterCall


class LiveCalls(Protocol):
    """The calls whose media stream is open in this process."""

    def is_live(self, call_sid: str) -> bool: ...

    async def end_call(self, call_sid: str, reason: EndReason) -> bool:
        """Finish a live call (commit its last turn, await its transcript); False if unknown."""


class LostCallWatch(Protocol):
    """Ends calls whose process is gone (:class:`callbridge.call.lost_calls.LostCallReaper`)."""

    def watch(self, call_sid: str) -> None:
        """Twilio says the call is over and it is not live here: look again as soon as
        the lease of the process holding it runs out."""


SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", DurableStore)
LIVE_CALLS = web.AppKey("live_calls", LiveCalls)
# The same registry as LIVE_CALLS, for the media route, the drain and the claims' heartbeat.
REGISTRY = web.AppKey("live_call_registry", LiveCallRegistry)
CLAIMS = web.AppKey("stream_claims", StreamClaims)
SINK = web.AppKey("sink", CallEventSink)
LOST_CALLS = web.AppKey("lost_calls", LostCallWatch)
EVENT_WRITERS = web.AppKey("event_writers", EventWriters)
# The background-job runner; features register their job kinds on it in create_app.
JOBS = web.AppKey("jobs", JobRunner)
# Post-call job factories: a feature appends one to have jobs enqueued at every call's end.
AFTER_CALL = web.AppKey("after_call", list[AfterCall])
METRICS = web.AppKey("metrics", BridgeMetrics)
LIVE_FEED = web.AppKey("live_feed", LiveFeed)
# Audio kept for the post-call batch pass (only with CALLBRIDGE_POSTCALL=batch).
AUDIO_SPOOL = web.AppKey("audio_spool", AudioSpool)
# Run before DELETE /v1/calls/{sid} erases the store rows: erasure kept elsewhere (the audio,
# the transcripts at ElevenLabs). One that raises stops the erasure (503, try again).
CALL_ERASERS = web.AppKey("call_erasers", list[Callable[[str], Awaitable[None]]])
