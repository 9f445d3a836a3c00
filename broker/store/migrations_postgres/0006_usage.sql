-- Usage history: as SQLite's 0008_usage.sql (broker/usage.py).
CREATE TABLE IF NOT EXISTS usage_points (
    estate_id   TEXT NOT NULL REFERENCES estates(id),
    series      TEXT NOT NULL,
    resolution  INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    allocated   INTEGER NOT NULL,
    in_use      INTEGER NOT NULL,
    available   INTEGER NOT NULL,
    PRIMARY KEY (estate_id, series, resolution, at)
);
CREATE INDEX IF NOT EXISTS usage_points_tier ON usage_points(estate_id, resolution, at);

CREATE TABLE IF NOT EXISTS usage_rounds (
    estate_id  TEXT NOT NULL REFERENCES estates(id),
    at         BIGINT NOT NULL,
    PRIMARY KEY (estate_id, at)
);
