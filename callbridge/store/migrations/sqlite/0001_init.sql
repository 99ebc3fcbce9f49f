-- callbridge schema 1 (SQLite). Times are integer microseconds since the Unix epoch (UTC).
CREATE TABLE calls (
    call_sid          TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    stream_sid        TEXT,
    account_sid       TEXT,
    from_number       TEXT,
    to_number         TEXT,
    tracks            TEXT NOT NULL DEFAULT '[]',
    custom_parameters TEXT NOT NULL DEFAULT '{}',
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    ended_at          INTEGER,
    duration_ms       INTEGER,
    end_reason        TEXT,
    twilio_status     TEXT,
    twilio_duration_s INTEGER,
    segments          INTEGER NOT NULL DEFAULT 0,
    language_code     TEXT,
    degraded          TEXT,
    summary           TEXT
);
CREATE INDEX calls_newest ON calls (created_at DESC, call_sid DESC);

CREATE TABLE segments (
    call_sid      TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    stream_sid    TEXT NOT NULL,
    speaker       TEXT NOT NULL,
    track         TEXT NOT NULL,
    text          TEXT NOT NULL,
    words         TEXT NOT NULL DEFAULT '[]',
    start_ms      INTEGER NOT NULL,
    end_ms        INTEGER NOT NULL,
    language      TEXT,
    committed_at  INTEGER NOT NULL,
    PRIMARY KEY (call_sid, sequence)
);

CREATE TABLE events (
    event_id    TEXT PRIMARY KEY,
    call_sid    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    body        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_call ON events (call_sid);

-- One row per event per target. Only the head (oldest unfinished delivery of its
-- call and target) is claimable: that is what keeps each call's events in order.
CREATE TABLE deliveries (
    delivery_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL,
    call_sid         TEXT NOT NULL,
    target           TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    is_head          INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    UNIQUE (event_id, target)
);
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at)
    WHERE status = 'pending' AND is_head = 1;
CREATE INDEX deliveries_queue ON deliveries (call_sid, target, delivery_id)
    WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries (status, finished_at);
CREATE INDEX deliveries_lease ON deliveries (lease_owner) WHERE lease_owner IS NOT NULL;
