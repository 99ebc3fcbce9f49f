"""The storage interface: calls, committed segments, live-call claims and the webhook outbox.

One small async interface so that SQLite (embedded default) and PostgreSQL (scale-out)
are interchangeable. Writes that belong together happen in one transaction: a segment and
its ``transcript.committed`` event, a call's end, its summary and its ``call.ended`` event
(the transactional outbox). Every event is kept as the call's event log, numbered per
call, until the call is erased; deliveries to webhook targets are rows beside it.

**An ended call is final.** Once a call's row says ``ended``, no write changes it again: a
later ``call_requested``, ``call_started``, ``segment_committed`` or ``call_ended`` for it is
ignored (and logged), so a replayed or forged stream can neither rewrite its parties and
parameters nor append to its transcript, replace its summary or send its events twice.
What comes after the end by design is still recorded: Twilio's own status
(``twilio_status``) and the AI summary (``set_ai_summary``).

**Live-call claims** (one live media stream per call across every process that shares the
store). The claim is a lease on the call's row: ``calls.stream_owner`` names the process that
holds the call's media stream, ``calls.stream_lease_expires_at`` says until when.

* *Owner* is an instance id, unique per process and meaningful to an operator
  (``<hostname>:<pid>:<random>``, see :func:`callbridge.call.stream_claims.new_instance_id`).
* *Claim* (:meth:`Store.claim_stream`) happens on Twilio's ``start``, before the bridge does
  any work for the stream, as one atomic statement (an upsert whose ``DO UPDATE … WHERE``
  only takes a row that is not ended and whose lease is free or expired: under SQLite's
  ``BEGIN IMMEDIATE`` across processes, under PostgreSQL's row lock across machines). It
  answers :class:`StreamClaim`: ``claimed``, ``ended`` (the call is over: refused) or
  ``live_elsewhere`` (another owner's lease is current: refused).
* *Heartbeat* (:meth:`Store.renew_stream_claims`): each process renews the leases of all its
  live calls in one statement every third of a lease, from one task (never a task per
  call). Calls it no longer owns come back missing from the answer, and are ended there.
* *Release*: ``call_ended`` clears the claim in the same transaction that ends the call;
  :meth:`Store.release_stream` clears it for a stream that never got as far.
* *A crashed process* stops renewing: its claims expire after the lease and can be taken
  again. The lease expiry is indexed, so a survivor can find the calls of a dead owner
  (``stream_owner IS NOT NULL AND stream_lease_expires_at <= now AND status <> 'ended'``)
  and end them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from callbridge.jobs.model import JobQueue, NewJob
from callbridge.models import BatchTranscript, CallEnded, CallInfo, CommittedSegment


class StoreError(Exception):
    """The database is unreachable, unreadable or of an unknown schema version."""


class CallStatus(enum.StrEnum):
    RINGING = "ringing"  # /twilio/voice answered, no media yet
    LIVE = "live"  # media stream running
    ENDED = "ended"  # transcription finished, summary stored


# Twilio call statuses after which the call is over; once recorded, a status is final.
FINAL_TWILIO_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


class StreamClaim(enum.StrEnum):
    """The answer to a claim on a call's media stream (see the module docstring)."""

    CLAIMED = "claimed"  # this owner holds the stream's lease now
    ENDED = "ended"  # the call has ended: its stream may not start again
    LIVE_ELSEWHERE = "live_elsewhere"  # another owner's lease has not expired


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_sid: str
    status: CallStatus
    stream_sid: str | None
    account_sid: str | None
    from_number: str | None
    to_number: str | None
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration_ms: int | None
    end_reason: str | None
    twilio_status: str | None  # last CallStatus from a status callback
    twilio_duration_s: int | None  # CallDuration from the `completed` callback
    segments: int
    language_code: str | None
    degraded: str | None
    summary: Mapping[str, Any] | None
    ai_summary: Mapping[str, Any] | None = None  # the ``ai`` object (interface §6), if any


@dataclass(frozen=True, slots=True)
class LostStream:
    """A live call taken over from an owner that stopped renewing its lease."""

    call: CallRecord
    previous_owner: str
    lease_expired_at: datetime  # when the previous owner's lease ran out


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A webhook event as stored: ``body`` is the exact JSON that is POSTed and signed."""

    event_id: str  # "evt_…", the `webhook-id` on every attempt
    call_sid: str
    event_type: str
    body: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One entry of a call's event log: the webhook event exactly as stored and sent.

    ``position`` numbers a call's events 1, 2, 3 … in the order they were stored, without
    gaps (events are only ever erased together with their call)."""

    call_sid: str
    position: int
    event_id: str
    event_type: str
    body: bytes


EventsStored = Callable[[str], None]
"""Told the call sid after each commit that stored events of that call (event loop)."""


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply schema migrations; raises :class:`StoreError`."""

    async def close(self) -> None: ...

    # calls and segments -------------------------------------------------
    async def call_requested(
        self, call_sid: str, account_sid: str | None, from_number: str | None, to_number: str | None
    ) -> None:
        """Record a call seen on /twilio/voice (idempotent)."""

    async def call_started(self, call: CallInfo, events: Sequence[OutboxEvent]) -> None:
        """Mark the call live and enqueue its ``call.started`` event, in one transaction."""

    async def segment_committed(
        self, segment: CommittedSegment, events: Sequence[OutboxEvent]
    ) -> None:
        """Store the segment and enqueue its event (none for empty text), in one transaction."""

    async def call_ended(
        self,
        ended: CallEnded,
        summary: Mapping[str, Any],
        events: Sequence[OutboxEvent],
        jobs: Sequence[NewJob] = (),
    ) -> None:
        """Store the end, the summary and the ``call.ended`` event, and enqueue the call's
        post-call ``jobs`` (see :mod:`callbridge.jobs`), in one transaction. The summary's
        ``ai``, if any, is stored as the call's ``ai_summary`` (:func:`split_ai_summary`)."""

    async def set_ai_summary(
        self, call_sid: str, ai_summary: Mapping[str, Any], events: Sequence[OutboxEvent]
    ) -> bool:
        """Store the call's AI summary state and enqueue its event, in one transaction.

        A final state (ready, failed) is written once: False, and nothing stored or sent,
        when the call is unknown (e.g. erased meanwhile) or its AI summary is final already
        (e.g. written by a runner that lost its lease)."""

    async def set_batch_transcript(
        self, record: BatchTranscript, events: Sequence[OutboxEvent], jobs: Sequence[NewJob] = ()
    ) -> bool:
        """Store the call's batch transcript (or the pass's failure), enqueue its event and
        follow-up jobs, in one transaction. Written once: False, and nothing stored, sent or
        enqueued, when the call is unknown (erased meanwhile) or has a batch record already."""

    async def get_batch_transcript(self, call_sid: str) -> BatchTranscript | None: ...

    async def twilio_status(self, call_sid: str, status: str, duration_s: int | None) -> None:
        """Record a Twilio call status callback.

        Idempotent, also when replayed out of order: a final status (``completed``, ``busy``,
        ``failed``, ``no-answer``, ``canceled``) is never replaced by a progress status, and
        a known duration is never replaced by a missing one."""

    # live-call claims ---------------------------------------------------
    async def claim_stream(self, call_sid: str, owner: str, lease_s: float) -> StreamClaim:
        """Take the lease on ``call_sid``'s media stream for ``owner``, atomically; the
        call's row is created (ringing) if it does not exist yet."""

    async def renew_stream_claims(
        self, owner: str, call_sids: Sequence[str], lease_s: float
    ) -> set[str]:
        """Extend ``owner``'s leases on ``call_sids`` to now + ``lease_s``; the call SIDs
        whose lease ``owner`` still held (and so renewed)."""

    async def release_stream(self, call_sid: str, owner: str) -> None:
        """Give up ``owner``'s lease on ``call_sid`` (nothing if it holds none)."""

    async def take_over_lost_streams(
        self, owner: str, lease_s: float, limit: int
    ) -> list[LostStream]:
        """Claim for ``owner``, for ``lease_s``, up to ``limit`` live calls whose lease,
        held by another owner, has expired (that process stopped renewing: it is gone). One
        atomic statement per backend, so two processes never take the same call."""

    async def stream_lease_expiry(self, call_sid: str) -> datetime | None:
        """When the lease on the call's live stream runs out; None if no process holds
        one (never started, ended, or released)."""

    async def calls_ended_by_twilio(self, owner: str) -> set[str]:
        """The calls whose stream ``owner`` holds and for which a final Twilio call status
        has been recorded, by whichever process received the callback."""

    async def get_call(self, call_sid: str) -> CallRecord | None: ...

    async def list_calls(
        self, limit: int, cursor: str | None, status: CallStatus | None = None
    ) -> tuple[list[CallRecord], str | None]:
        """Newest first, of one ``status`` if given; returns the page and the cursor of the
        next page (None at the end)."""

    async def get_segments(self, call_sid: str) -> list[CommittedSegment]: ...

    async def delete_call(self, call_sid: str) -> bool:
        """Erase the call, its segments, its events and deliveries, its jobs and its batch
        transcript; False if unknown."""

    # the event log --------------------------------------------------------------------
    async def events_after(
        self, positions: Mapping[str, int], limit: int
    ) -> dict[str, list[StoredEvent] | None]:
        """For each call, up to ``limit`` of its events after ``positions[call_sid]``, in
        order; None for a call the store does not hold (never seen, or erased)."""

    async def event_position(self, call_sid: str, event_id: str) -> int | None:
        """The position of one of the call's events, None if the call has no such event."""

    def on_events_stored(self, callback: EventsStored | None) -> None:
        """Call ``callback(call_sid)`` after every commit of this store object that stored
        events (other processes' writes are not seen); None stops it."""

    @property
    def jobs(self) -> JobQueue:
        """The durable background-job queue in the same database."""


# --- the webhook outbox: per-target deliveries (added for the dispatcher) -----------------


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its turn, due, in flight, or waiting for a retry
    DELIVERED = "delivered"  # a target answered 2xx
    FAILED = "failed"  # final: a non-retryable answer, or retries ran out


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one target, claimed by a dispatcher (it holds the lease)."""

    delivery_id: int
    event_id: str
    call_sid: str
    event_type: str
    target: str
    body: bytes
    attempts: int  # attempts already made before this one
    created_at: datetime  # when the event was enqueued; retries stop retry_for_s after it


@dataclass(frozen=True, slots=True)
class TargetBacklog:
    """A webhook target's undelivered events: how many, and since when."""

    target: str
    pending: int
    oldest_created_at: datetime | None  # when the oldest pending delivery was enqueued


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    pending: int
    delivered: int
    failed: int


class OutboxStore(Protocol):
    """The outbox half of the store, as the webhook dispatcher uses it.

    Deliveries are created inside ``call_started``/``segment_committed``/``call_ended``:
    one per event per configured target (the store is built with the target list). For
    every (call, target) only the oldest unfinished delivery is ever claimable, so events
    of one call reach one target in order; other calls and targets never wait on it.
    """

    async def claim_deliveries(
        self, now: datetime, limit: int, owner: str, lease_s: float, target: str | None = None
    ) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (oldest first) to ``owner`` for ``lease_s``."""

    async def mark_delivered(self, delivery_id: int, owner: str) -> bool:
        """Finish a delivery as delivered; False if ``owner`` no longer holds its lease."""

    async def mark_retry(
        self, delivery_id: int, owner: str, next_attempt_at: datetime, error: str
    ) -> bool:
        """Count a failed attempt and make the delivery due again at ``next_attempt_at``."""

    async def mark_failed(self, delivery_id: int, owner: str, error: str) -> bool:
        """Count a final failed attempt; the next event of the call becomes claimable."""

    async def release_claims(self, owner: str) -> int:
        """Give up every lease ``owner`` holds (a dispatcher stopping with work in flight)."""

    async def delivery_counts(self) -> DeliveryCounts: ...

    async def pending_deliveries_exist(self) -> bool: ...

    async def delivery_backlog(self) -> list[TargetBacklog]:
        """Pending deliveries per target (every configured target, and any other that
        still has some), with the oldest one's enqueue time."""

    async def purge_finished_deliveries(self, finished_before: datetime) -> int:
        """Delete deliveries finished before a moment (the events stay: they are the
        call's event log, erased with the call)."""


class DurableStore(Store, OutboxStore, Protocol):
    """What :func:`callbridge.store.factory.open_store` returns: calls, segments, outbox."""


# --- helpers shared by the SQL backends -----------------------------------------------------


def split_ai_summary(
    summary: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A call-end summary as stored: the analytics summary without ``ai``, and ``ai`` (the
    AI summary's first state), which has a column of its own so that its later states
    replace it without ever rewriting the analytics summary."""
    analytics = {key: value for key, value in summary.items() if key != "ai"}
    ai = summary.get("ai")
    return analytics, (dict(ai) if isinstance(ai, Mapping) else None)


def log_write_after_end(write: str, call_sid: str) -> None:
    """A write for a call that has already ended, ignored (see "An ended call is final")."""
    structlog.get_logger("callbridge.store").warning(
        "store.write_after_end_ignored", write=write, call_sid=call_sid
    )


def backlog_per_target(
    targets: Sequence[str], pending: Mapping[str, tuple[int, datetime]]
) -> list[TargetBacklog]:
    """Every configured target (zero when nothing waits) and any other with pending rows."""
    found = [
        TargetBacklog(t, *pending[t]) if t in pending else TargetBacklog(t, 0, None)
        for t in targets
    ]
    found += [TargetBacklog(t, *row) for t, row in sorted(pending.items()) if t not in targets]
    return found


def encode_cursor(created_at_us: int, call_sid: str) -> str:
    """The opaque ``list_calls`` cursor: the position of the last call on a page."""
    raw = json.dumps([created_at_us, call_sid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of :func:`encode_cursor`; ``ValueError`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at_us, call_sid = json.loads(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("invalid cursor") from exc
    if type(created_at_us) is not int or not isinstance(call_sid, str):
        raise ValueError("invalid cursor")
    if not 0 <= created_at_us <= _MAX_MICROS:  # beyond what a database column holds
        raise ValueError("invalid cursor")
    return created_at_us, call_sid


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS = to_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
