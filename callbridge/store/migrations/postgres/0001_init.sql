-- callbridge schema 1 (PostgreSQL).
CREATE TABLE calls (
    call_sid          TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    stream_sid        TEXT,
    account_sid       TEXT,
    from_number       TEXT,
    to_number         TEXT,
    tracks            JSONB NOT NULL DEFAULT '[]',
    custom_parameters JSONB NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL,
    started_at        TIMESTAMPTZ,
    ended_at          TIMESTAMPTZ,
    duration_ms       BIGINT,
    end_reason        TEXT,
    twilio_status     TEXT,
    twilio_duration_s INTEGER,
    segments          INTEGER NOT NULL DEFAULT 0,
    language_code     TEXT,
    degraded          TEXT,
    summary           JSONB
);
CREATE INDEX calls_newest ON calls (created_at DESC, call_sid DESC);

CREATE TABLE segments (
    call_sid      TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    stream_sid    TEXT NOT NULL,
    speaker       TEXT NOT NULL,
    track         TEXT NOT NULL,
    text          TEXT NOT NULL,
    words         JSONB NOT NULL DEFAULT '[]',
    start_ms      BIGINT NOT NULL,
    end_ms        BIGINT NOT NULL,
    language      TEXT,
    committed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (call_sid, sequence)
);

CREATE TABLE events (
    event_id    TEXT PRIMARY KEY,
    call_sid    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    body        BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_call ON events (call_sid);

-- One row per event per target. Only the head (oldest unfinished delivery of its
-- call and target) is claimable: that is what keeps each call's events in order.
CREATE TABLE deliveries (
    delivery_id      BIGSERIAL PRIMARY KEY,
    event_id         TEXT NOT NULL,
    call_sid         TEXT NOT NULL,
    target           TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    is_head          BOOLEAN NOT NULL DEFAULT FALSE,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ,
    UNIQUE (event_id, target)
);
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at)
    WHERE status = 'pending' AND is_head;
CREATE INDEX deliveries_queue ON deliveries (call_sid, target, delivery_id)
    WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries (status, finished_at);
CREATE INDEX deliveries_lease ON deliveries (lease_owner) WHERE lease_owner IS NOT NULL;
