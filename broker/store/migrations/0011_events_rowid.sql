-- The audit log's ids become plain row ids: `events` is rebuilt without AUTOINCREMENT,
-- which made every event also write its high-water mark to sqlite_sequence (a second
-- B-tree write per grant; docs/performance.md, "Fewer statements per grant"). Every
-- column, id and hash is copied as it is, and the one index is made again.
--
-- Ids still only grow: SQLite hands a new row the largest id + 1, and the broker never
-- deletes an event (no retention, no purge). Only a hand edit that deleted the newest
-- events could make their ids be handed out again, which AUTOINCREMENT prevented. The
-- chain alone does not show a dropped tail either way; whoever noted the newest event's
-- id and hash (docs/design.md, "The audit chain") then finds that id with another hash.
CREATE TABLE events_rowid (
    id          INTEGER PRIMARY KEY,
    estate_id   TEXT,
    at          INTEGER NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT,
    actor_name  TEXT,
    action      TEXT NOT NULL,
    pool_id     TEXT,
    subject_id  TEXT,
    details     TEXT NOT NULL,
    prev_hash   TEXT,
    hash        TEXT
);
INSERT INTO events_rowid (id, estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id,
                          details, prev_hash, hash)
SELECT id, estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details, prev_hash, hash
FROM events ORDER BY id;
DROP TABLE events;
ALTER TABLE events_rowid RENAME TO events;
CREATE INDEX events_estate ON events(estate_id, id);
