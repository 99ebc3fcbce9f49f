-- callbridge schema 5 (SQLite): the live-call claim (see callbridge/store/base.py).
-- The process holding a call's media stream (an instance id) and until when its lease runs,
-- in integer microseconds since the Unix epoch. Both are NULL when no stream is live.
ALTER TABLE calls ADD COLUMN stream_owner TEXT;
ALTER TABLE calls ADD COLUMN stream_lease_expires_at INTEGER;
CREATE INDEX calls_stream_owner ON calls (stream_owner) WHERE stream_owner IS NOT NULL;
CREATE INDEX calls_stream_lease ON calls (stream_lease_expires_at) WHERE stream_owner IS NOT NULL;
