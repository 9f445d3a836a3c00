-- Usage history (broker/usage.py): each pool's allocated / in use / available, and the
-- same per licence type across the estate, sampled every five minutes by whichever
-- broker claims the round first, and rolled up into hourly and then daily points so
-- that the rows kept per series are bounded however long the broker runs.
-- series: 'pool:<pool id>' or 'type:<licence type>'; resolution: 300, 3600 or 86400
-- seconds; at: the start of the point's span. A rolled-up point keeps the largest
-- allocated and in_use and the smallest available of what it replaced.
CREATE TABLE IF NOT EXISTS usage_points (
    estate_id   TEXT NOT NULL REFERENCES estates(id),
    series      TEXT NOT NULL,
    resolution  INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    allocated   INTEGER NOT NULL,
    in_use      INTEGER NOT NULL,
    available   INTEGER NOT NULL,
    PRIMARY KEY (estate_id, series, resolution, at)
);
-- The roll-up's scan: one tier's points older than its cut-off, across the estate's
-- series. (A series' own range is read by the primary key.)
CREATE INDEX IF NOT EXISTS usage_points_tier ON usage_points(estate_id, resolution, at);

-- One row per (estate, five-minute round): the unique key that lets any number of
-- replicas sample each round once.
CREATE TABLE IF NOT EXISTS usage_rounds (
    estate_id  TEXT NOT NULL REFERENCES estates(id),
    at         INTEGER NOT NULL,
    PRIMARY KEY (estate_id, at)
);
