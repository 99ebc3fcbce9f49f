-- callbridge schema 6 (PostgreSQL): indexes for what is read often, so it is never a table
-- scan: the webhook backlog per target (pending deliveries and the oldest one's age, read at
-- every /metrics scrape), and whether a call still has post-call work (its event stream
-- stays open until that work is done).
CREATE INDEX deliveries_pending_target ON deliveries (target, created_at)
    WHERE status = 'pending';
CREATE INDEX jobs_unfinished_call ON jobs (call_sid) WHERE status IN ('pending', 'running');
