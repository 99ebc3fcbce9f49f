-- callbridge schema 7 (SQLite): the post-call batch transcript of a call (callbridge.postcall),
-- or why the pass failed. Segments are the JSON of the API's transcript, already redacted.
CREATE TABLE batch_transcripts (
    call_sid          TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    segments          TEXT NOT NULL DEFAULT '[]',
    summary           TEXT,
    error             TEXT,
    transcription_ids TEXT NOT NULL DEFAULT '[]',
    audio_seconds     REAL NOT NULL DEFAULT 0,
    model_id          TEXT,
    created_at        INTEGER NOT NULL
);
