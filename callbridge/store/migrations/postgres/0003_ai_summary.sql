-- callbridge schema 3 (PostgreSQL): the AI summary's state, stored with the call (status
-- pending/ready/failed and what the LLM wrote, or why it failed).
ALTER TABLE calls ADD COLUMN ai_summary JSONB;
