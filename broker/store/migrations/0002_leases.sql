-- Leases: an encoder's seats, split across purchases of one pool.

CREATE TABLE leases (
    id            TEXT PRIMARY KEY,
    estate_id     TEXT NOT NULL REFERENCES estates(id),
    pool_id       TEXT NOT NULL REFERENCES pools(id),
    server_id     TEXT NOT NULL REFERENCES servers(id),
    encoder       TEXT NOT NULL,
    licence_type  TEXT NOT NULL,
    count         INTEGER NOT NULL CHECK (count > 0),
    state         TEXT NOT NULL CHECK (state IN ('active', 'released', 'revoked', 'lapsed')),
    created_at    INTEGER NOT NULL,
    renewed_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    end_reason    TEXT
);
CREATE UNIQUE INDEX leases_encoder ON leases(server_id, encoder) WHERE state = 'active';
CREATE INDEX leases_pool_expiry ON leases(pool_id, expires_at) WHERE state = 'active';
CREATE INDEX leases_expiry ON leases(expires_at) WHERE state = 'active';
CREATE INDEX leases_estate ON leases(estate_id, state);
CREATE INDEX leases_ended ON leases(pool_id, expires_at) WHERE state IN ('revoked', 'released');

CREATE TABLE lease_seats (
    lease_id     TEXT NOT NULL REFERENCES leases(id),
    purchase_id  TEXT NOT NULL REFERENCES purchases(id),
    pool_id      TEXT NOT NULL,
    count        INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (lease_id, purchase_id)
) WITHOUT ROWID;
