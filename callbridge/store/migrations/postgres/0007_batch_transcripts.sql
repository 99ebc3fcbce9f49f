-- callbridge schema 7 (PostgreSQL): the post-call batch transcript of a call
-- (callbridge.postcall), or why the pass failed. Segments are the JSON of the API's
-- transcript, already redacted.
CREATE TABLE batch_transcripts (
    call_sid          TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    segments          JSONB NOT NULL DEFAULT '[]',
    summary           JSONB,
    error             TEXT,
    transcription_ids JSONB NOT NULL DEFAULT '[]',
    audio_seconds     DOUBLE PRECISION NOT NULL DEFAULT 0,
    model_id          TEXT,
    created_at        TIMESTAMPTZ NOT NULL
);
