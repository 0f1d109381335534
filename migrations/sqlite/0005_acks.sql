-- Acknowledgments: per subscriber (`sub` of the token) and topic, the seq up
-- to which the client has processed every event ("I have everything up to
-- seq N"). Seqs are gapless, so one number per pair says it all. `seq` only
-- ever rises (writes use MAX), so it can never move back. `acked_at` is when
-- it last rose, in milliseconds.
CREATE TABLE acks (
    sub      TEXT NOT NULL,
    topic    TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    acked_at INTEGER NOT NULL,
    PRIMARY KEY (sub, topic)
);

-- Receipts are read by topic.
CREATE INDEX acks_topic ON acks (topic, sub);
