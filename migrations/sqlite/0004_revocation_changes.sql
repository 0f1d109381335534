-- Revocations are read incrementally: every insert or renewal of a row takes
-- the next change number from `revocation_changes` (one row, whose lock
-- orders the writers, so numbers are assigned in commit order), and each
-- node asks only for the rows changed after the last number it saw. The
-- counter never goes back, even when every row has been pruned.
ALTER TABLE revocations ADD COLUMN change_no INTEGER NOT NULL DEFAULT 0;

UPDATE revocations SET change_no = (
    SELECT COUNT(*) FROM revocations AS r
    WHERE r.revoked_at < revocations.revoked_at
       OR (r.revoked_at = revocations.revoked_at
           AND (r.kind < revocations.kind
                OR (r.kind = revocations.kind AND r.value <= revocations.value)))
);

CREATE INDEX revocations_change_no ON revocations (change_no);

CREATE TABLE revocation_changes (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_change INTEGER NOT NULL
);

INSERT INTO revocation_changes (id, last_change) SELECT 1, COUNT(*) FROM revocations;
