-- callbridge schema 5 (SQLite): the webhook backlog per target (pending deliveries and the
-- oldest one's age, read at every /metrics scrape) from an index, not a table scan.
CREATE INDEX deliveries_pending_target ON deliveries (target, created_at)
    WHERE status = 'pending';
