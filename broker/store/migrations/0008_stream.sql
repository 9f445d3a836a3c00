-- What GET /v1/stream pushes to agents (broker/push/): each row is written in the same
-- transaction as the admin action it reports, so that any replica can serve it and a
-- reconnecting agent resumes from its Last-Event-ID. A row concerns one server
-- (server_id), every server bound to a pool (pool_id), or, with both NULL, every server.
-- Rows are pruned to a bounded retention; stream_horizon's one row (none until the first
-- prune) remembers the highest id pruned,
-- so that a resume from before it is told to resync instead of silently missing events.
CREATE TABLE stream_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    type        TEXT NOT NULL,
    server_id   TEXT,
    pool_id     TEXT,
    data        TEXT NOT NULL
);
CREATE INDEX stream_events_at ON stream_events(at);

CREATE TABLE stream_horizon (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through  INTEGER NOT NULL
);
