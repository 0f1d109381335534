-- Push to offline devices (issue 24).
--
-- `devices`: one row per registered device (a browser's Web Push
-- subscription, an FCM registration token, an APNs device token), owned by
-- the subject (`sub`) whose token registered it. `address` is the Web Push
-- endpoint or the device token; `address_key` is `platform:` plus its
-- SHA-256, unique, so one device is registered once. `keys` holds a Web Push
-- subscription's `p256dh` and `auth` (JSON). `next_push_at` (milliseconds)
-- is the device's quiet period: nothing is sent to it before.
CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    sub          TEXT NOT NULL,
    platform     TEXT NOT NULL,
    address      TEXT NOT NULL,
    address_key  TEXT NOT NULL UNIQUE,
    keys         TEXT,
    created_at   INTEGER NOT NULL,
    next_push_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX devices_sub ON devices (sub, id);

-- The topics (or patterns) that reach a device. `prefix` is the filter's
-- literal segments before its first wildcard (the whole topic for a plain
-- topic), so the devices a topic may reach are found by the prefixes of
-- the topic's name.
CREATE TABLE device_topics (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    filter    TEXT NOT NULL,
    prefix    TEXT NOT NULL,
    PRIMARY KEY (device_id, filter)
);
CREATE INDEX device_topics_prefix ON device_topics (prefix);

-- The feed: written in the transaction that commits events (while push is
-- on), one row per topic of a group commit, and consumed by the scheduler
-- in the transaction that turns it into due pushes. A committed event is therefore always
-- either still in the feed or already in the outbox.
CREATE TABLE push_feed (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic     TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    time_ms   INTEGER NOT NULL
);

-- The outbox: at most one pending push per device and topic (events of a
-- topic collapse into it until it is sent: it stands for `first_seq` to
-- `last_seq`). `due_at`, `lease_until` in
-- milliseconds; a row is claimed by setting `lease_until` (and sent once
-- by the claiming node); a lease that runs out makes it claimable again.
CREATE TABLE push_outbox (
    device_id     TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    topic         TEXT NOT NULL,
    sub           TEXT NOT NULL,
    first_seq     INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL,
    first_time_ms INTEGER NOT NULL,
    due_at        INTEGER NOT NULL,
    lease_until   INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, topic)
);
CREATE INDEX push_outbox_due ON push_outbox (due_at);

-- The topics pushed to a subject, for its unread count (the badge):
-- events after `since_seq` count until acknowledged.
CREATE TABLE push_topics (
    sub       TEXT NOT NULL,
    topic     TEXT NOT NULL,
    since_seq INTEGER NOT NULL,
    PRIMARY KEY (sub, topic)
);
