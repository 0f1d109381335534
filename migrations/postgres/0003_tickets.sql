-- Tickets: short-lived, single-use credentials for URLs (POST /v1/tickets),
-- shared by every node so a ticket minted on one opens a connection on any.
-- `key` is the SHA-256 (hex) of the ticket, never the ticket itself;
-- `principal` is what it authorizes (JSON); `expires_at` in milliseconds.
-- Taking a ticket deletes its row, which is what makes it single-use.
CREATE TABLE tickets (
    key        TEXT PRIMARY KEY,
    principal  TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX tickets_expires_at ON tickets (expires_at);
