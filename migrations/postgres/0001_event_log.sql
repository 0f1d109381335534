-- The durable per-topic event log.
-- `topics.head` is the last seq given out on a topic; it is kept even when every
-- event of the topic has been pruned, so seqs never restart.
CREATE TABLE topics (
    topic TEXT COLLATE "C" PRIMARY KEY,
    head  BIGINT NOT NULL
);

-- `data` is the publisher's JSON text, kept byte for byte.
CREATE TABLE events (
    topic   TEXT COLLATE "C" NOT NULL,
    seq     BIGINT NOT NULL,
    id      TEXT COLLATE "C" NOT NULL,
    type    TEXT,
    time_ms BIGINT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (topic, seq)
);

-- Idempotency: one event per (topic, id) among retained events.
CREATE UNIQUE INDEX events_topic_id ON events (topic, id);
-- Retention by age.
CREATE INDEX events_time_ms ON events (time_ms);
