-- callbridge schema 3 (SQLite): the AI summary's state, stored with the call (JSON text:
-- status pending/ready/failed and what the LLM wrote, or why it failed).
ALTER TABLE calls ADD COLUMN ai_summary TEXT;
