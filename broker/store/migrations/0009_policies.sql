-- Licence policies (docs/design.md, "Licence policies"): a pool's anti-cycling soft-lock
-- windows, each encoder's first grant in a pool, the seats held back for an encoder, and
-- per-server limits and reservations. All off by default: a pool without them behaves as
-- before.

ALTER TABLE pools ADD COLUMN soft_lock_hardware INTEGER NOT NULL DEFAULT 0
    CHECK (soft_lock_hardware BETWEEN 0 AND 7776000);
ALTER TABLE pools ADD COLUMN soft_lock_container INTEGER NOT NULL DEFAULT 0
    CHECK (soft_lock_container BETWEEN 0 AND 7776000);

-- An encoder's first grant in a pool starts its window; its kind is the one it said then.
CREATE TABLE encoder_windows (
    pool_id     TEXT NOT NULL REFERENCES pools(id),
    encoder     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('hardware', 'container')),
    started_at  INTEGER NOT NULL,
    PRIMARY KEY (pool_id, encoder)
) WITHOUT ROWID;

-- Seats an encoder gave back inside its window, per purchase, held for it. They count
-- only while the window (against the pool's current setting) is open.
CREATE TABLE soft_locks (
    pool_id      TEXT NOT NULL REFERENCES pools(id),
    encoder      TEXT NOT NULL,
    purchase_id  TEXT NOT NULL REFERENCES purchases(id),
    count        INTEGER NOT NULL CHECK (count > 0),
    lease_id     TEXT NOT NULL,
    PRIMARY KEY (pool_id, encoder, purchase_id)
) WITHOUT ROWID;

-- Per server (or domain) and licence type: a cap on what its encoders hold together, and
-- seats of its pool kept for it.
CREATE TABLE server_limits (
    server_id     TEXT NOT NULL REFERENCES servers(id),
    licence_type  TEXT NOT NULL,
    max_seats     INTEGER CHECK (max_seats >= 0),
    reserved      INTEGER NOT NULL CHECK (reserved >= 0),
    PRIMARY KEY (server_id, licence_type)
) WITHOUT ROWID;
