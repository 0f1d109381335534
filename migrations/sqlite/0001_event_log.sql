-- The durable per-topic event log.
-- `topics.head` is the last seq given out on a topic; it is kept even when every
-- event of the topic has been pruned, so seqs never restart.
CREATE TABLE topics (
    topic TEXT PRIMARY KEY,
    head  INTEGER NOT NULL
);

-- `data` is the publisher's JSON text, kept byte for byte.
CREATE TABLE events (
    topic   TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    id      TEXT NOT NULL,
    type    TEXT,
    time_ms INTEGER NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (topic, seq)
);

-- Idempotency: one event per (topic, id) among retained events.
CREATE UNIQUE INDEX events_topic_id ON events (topic, id);
-- Retention by age.
CREATE INDEX events_time_ms ON events (time_ms);
