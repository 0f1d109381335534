-- Revocations are read incrementally: every insert or renewal of a row takes
-- the next change number from `revocation_changes` (one row, whose lock
-- orders the writers, so numbers are assigned in commit order), and each
-- node asks only for the rows changed after the last number it saw. The
-- counter never goes back, even when every row has been pruned.
ALTER TABLE revocations ADD COLUMN change_no BIGINT NOT NULL DEFAULT 0;

UPDATE revocations SET change_no = numbered.n
FROM (
    SELECT kind, value, row_number() OVER (ORDER BY revoked_at, kind, value) AS n
    FROM revocations
) AS numbered
WHERE revocations.kind = numbered.kind AND revocations.value = numbered.value;

CREATE INDEX revocations_change_no ON revocations (change_no);

CREATE TABLE revocation_changes (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_change BIGINT NOT NULL
);

INSERT INTO revocation_changes (id, last_change) SELECT 1, COUNT(*) FROM revocations;
