-- callbridge schema 4 (SQLite): the durable background-job queue (callbridge.jobs).
-- One job per (kind, call_sid). A claimed job is 'running' under a lease; a running job
-- whose lease has expired is claimable again (its runner died).
CREATE TABLE jobs (
    job_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT NOT NULL,
    call_sid         TEXT NOT NULL,
    payload          TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    UNIQUE (kind, call_sid)
);
CREATE INDEX jobs_due ON jobs (kind, next_attempt_at) WHERE status = 'pending';
CREATE INDEX jobs_leased ON jobs (kind, lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_finished ON jobs (status, finished_at);
CREATE INDEX jobs_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
