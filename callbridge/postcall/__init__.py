"""After the call: the Scribe v2 batch pass (``CALLBRIDGE_POSTCALL=batch``).

* :mod:`~callbridge.postcall.audio_spool`: the call audio kept on disk until the pass.
* :mod:`~callbridge.postcall.request_audio`: a track as the WAV sent, and its time map.
* :mod:`~callbridge.postcall.batch_client`: ``POST /v1/speech-to-text`` and its transcripts.
* :mod:`~callbridge.postcall.batch_transcript`: answers → the redacted ``batch`` transcript.
* :mod:`~callbridge.postcall.batch_pass`: the pass as a durable job, its failure, erasure.
* :mod:`~callbridge.postcall.setup`: wiring into the application.
"""
