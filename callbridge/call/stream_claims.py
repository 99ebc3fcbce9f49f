"""This process's live-call claims: one live media stream per call across every process.

The store keeps the claim (a lease on the call's row; the design is in
:mod:`callbridge.store.base`). This module is the process's side of it:

* :func:`new_instance_id` names the process (``<hostname>:<pid>:<random>``), the owner of
  its claims;
* :meth:`StreamClaims.claim` takes a call's lease on Twilio's ``start``, and
  :meth:`StreamClaims.release` gives it up when the stream ends;
* :meth:`StreamClaims.run_heartbeat` is the one task per process that renews the leases of
  all its live calls together, every third of a lease, and reports a call whose lease it no
  longer holds (taken over after it expired, or ended by another process) so that the call
  is ended here too.

A process that dies stops renewing, and its claims expire after ``lease_s``.

A store that cannot be reached on ``start`` does not cost the call (the events of a call
carry on through a store outage): the stream goes ahead, its claim is *deferred*, and the
heartbeat takes it as soon as the store answers, ending the call here if the answer is that
the call has ended or is live elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable, Collection

import structlog

from callbridge.store.base import Store, StreamClaim

log = structlog.get_logger("callbridge.call.stream_claims")


def new_instance_id() -> str:
    """A unique, readable owner id for this process: ``<hostname>:<pid>:<random>``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class StreamClaims:
    """Claims, heartbeat and release of this process's live calls, under one owner id."""

    def __init__(self, store: Store, lease_s: float, *, owner: str | None = None) -> None:
        self.store = store
        self.lease_s = lease_s
        self.owner = owner or new_instance_id()
        self.heartbeat_s = lease_s / 3
        self._deferred: set[str] = set()  # live here, claim not yet taken (store unreachable)

    async def claim(self, call_sid: str) -> StreamClaim:
        """Take the call's lease (raises :class:`~callbridge.store.base.StoreError`)."""
        return await self.store.claim_stream(call_sid, self.owner, self.lease_s)

    def defer(self, call_sid: str) -> None:
        """The store could not be asked: the heartbeat claims the call later."""
        log.warning("stream.claim_deferred", call_sid=call_sid, owner=self.owner)
        self._deferred.add(call_sid)

    async def release(self, call_sid: str) -> None:
        """Give the lease up; a failure is logged (the lease then simply expires)."""
        self._deferred.discard(call_sid)
        try:
            await self.store.release_stream(call_sid, self.owner)
        except Exception:
            log.exception("stream.release_failed", call_sid=call_sid, owner=self.owner)

    async def run_heartbeat(
        self, live_calls: Callable[[], Collection[str]], lost: Callable[[str], None]
    ) -> None:
        """Renew the leases of ``live_calls()`` every ``heartbeat_s``, in one store call;
        ``lost(call_sid)`` for each that this process no longer holds. Runs until cancelled."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self._deferred:
                await self._claim_deferred(live_calls, lost)
            call_sids = [sid for sid in live_calls() if sid not in self._deferred]
            if not call_sids:
                continue
            try:
                renewed = await self.store.renew_stream_claims(self.owner, call_sids, self.lease_s)
            except Exception:
                # The leases run on; the next beat tries again (a lease outlives two misses).
                log.exception("stream.heartbeat_failed", calls=len(call_sids), owner=self.owner)
                continue
            for call_sid in call_sids:
                if call_sid not in renewed and call_sid in live_calls():
                    log.warning("stream.lease_lost", call_sid=call_sid, owner=self.owner)
                    lost(call_sid)

    async def _claim_deferred(
        self, live_calls: Callable[[], Collection[str]], lost: Callable[[str], None]
    ) -> None:
        for call_sid in list(self._deferred):
            if call_sid not in live_calls():
                self._deferred.discard(call_sid)
                continue
            try:
                claim = await self.claim(call_sid)
            except Exception:
                return  # still unreachable: the next beat tries again
            self._deferred.discard(call_sid)
            if claim is StreamClaim.CLAIMED:
                log.info("stream.claim_taken", call_sid=call_sid, owner=self.owner)
            elif call_sid in live_calls():
                log.warning("stream.claim_refused", call_sid=call_sid, claim=str(claim))
                lost(call_sid)
