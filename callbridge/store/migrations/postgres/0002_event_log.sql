-- callbridge schema 2 (PostgreSQL): every event is kept as the call's event log, numbered
-- per call in the order it was stored (`position` 1, 2, 3 …), so GET /v1/calls/{sid}/events
-- can replay it and resume after any event; calls can be listed by status.
ALTER TABLE events ADD COLUMN position BIGINT NOT NULL DEFAULT 0;
UPDATE events SET position = numbered.n FROM (
    SELECT event_id, row_number() OVER (PARTITION BY call_sid ORDER BY created_at, event_id) AS n
    FROM events
) AS numbered WHERE events.event_id = numbered.event_id;
DROP INDEX events_call;
CREATE UNIQUE INDEX events_call_position ON events (call_sid, position);
CREATE INDEX calls_status_newest ON calls (status, created_at DESC, call_sid DESC);
