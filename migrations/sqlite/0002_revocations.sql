-- Revoked tokens: by subject (every token issued at or before `revoked_at`)
-- or by token id. Rows are kept until `expires_at` (seconds), the longest a
-- token may live, then pruned.
CREATE TABLE revocations (
    kind       TEXT NOT NULL, -- 'sub' or 'jti'
    value      TEXT NOT NULL,
    revoked_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE INDEX revocations_expires_at ON revocations (expires_at);
