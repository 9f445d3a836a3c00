-- Readiness (GET /healthz) proves the database can be written by updating this one row
-- when nothing else has been written for a second (broker/store/sqlite.py, ping).
CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at  INTEGER NOT NULL
);
INSERT INTO health (id, probed_at) VALUES (1, 0);
