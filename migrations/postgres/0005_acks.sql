-- Acknowledgments: per subscriber (`sub` of the token) and topic, the seq up
-- to which the client has processed every event ("I have everything up to
-- seq N"). Seqs are gapless, so one number per pair says it all. `seq` only
-- ever rises (writes use GREATEST), so nodes writing concurrently can never
-- move it back. `acked_at` is when it last rose, in milliseconds.
CREATE TABLE acks (
    sub      TEXT COLLATE "C" NOT NULL,
    topic    TEXT COLLATE "C" NOT NULL,
    seq      BIGINT NOT NULL,
    acked_at BIGINT NOT NULL,
    PRIMARY KEY (sub, topic)
);

-- Receipts are read by topic.
CREATE INDEX acks_topic ON acks (topic, sub);
