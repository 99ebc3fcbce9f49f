"""One call's pipeline, from Twilio's ``start`` to its last stored event.

:mod:`~callbridge.call.session` runs a call: frames are placed on their track's clock, cut
into turns (:mod:`~callbridge.call.turns`) and sent to Scribe by the connection loop
(:mod:`~callbridge.call.transcriber`, with its :mod:`~callbridge.call.commit_windows` ledger
and :mod:`~callbridge.call.send_pacer`). Committed segments leave through the call's event
writer (:mod:`~callbridge.call.event_writer`, journaled by
:mod:`~callbridge.call.event_journal` while the store is down) to its
:mod:`~callbridge.call.sink`. The process's bookkeeping of its calls lives here too: the
calls open in it (:mod:`~callbridge.call.live_calls`), their live-call claims in the store
(:mod:`~callbridge.call.stream_claims`) and the ending of calls whose process is gone
(:mod:`~callbridge.call.lost_calls`).
"""
