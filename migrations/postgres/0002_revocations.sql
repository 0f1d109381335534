-- Revoked tokens: by subject (every token issued at or before `revoked_at`)
-- or by token id. Rows are kept until `expires_at` (seconds), the longest a
-- token may live, then pruned.
CREATE TABLE revocations (
    kind       TEXT COLLATE "C" NOT NULL, -- 'sub' or 'jti'
    value      TEXT COLLATE "C" NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE INDEX revocations_expires_at ON revocations (expires_at);
