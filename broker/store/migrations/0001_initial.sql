-- Estates, admins, purchases, pools and their holdings, authentication codes,
-- servers, the audit log and idempotency records. Times are epoch seconds (UTC).

CREATE TABLE estates (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE admins (
    id          TEXT PRIMARY KEY,
    estate_id   TEXT NOT NULL REFERENCES estates(id),
    name        TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    is_primary  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    removed_at  INTEGER
);
CREATE INDEX admins_estate ON admins(estate_id);

CREATE TABLE pools (
    id             TEXT PRIMARY KEY,
    estate_id      TEXT NOT NULL REFERENCES estates(id),
    name           TEXT NOT NULL,
    name_key       TEXT NOT NULL,
    is_default     INTEGER NOT NULL,
    lease_seconds  INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    deleted_at     INTEGER
);
CREATE UNIQUE INDEX pools_name ON pools(estate_id, name_key) WHERE deleted_at IS NULL;
CREATE INDEX pools_estate ON pools(estate_id);

CREATE TABLE purchases (
    id            TEXT PRIMARY KEY,
    estate_id     TEXT NOT NULL REFERENCES estates(id),
    sales_order   TEXT NOT NULL,
    licence_type  TEXT NOT NULL,
    quantity      INTEGER NOT NULL CHECK (quantity > 0),
    expires_at    INTEGER NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('valid', 'on_hold')),
    held_at       INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX purchases_estate ON purchases(estate_id, expires_at);

-- How many seats of a purchase a pool holds; ``leased`` counts seats of active leases.
-- The CHECK is the database's own guard of invariant 2.
CREATE TABLE holdings (
    pool_id      TEXT NOT NULL REFERENCES pools(id),
    purchase_id  TEXT NOT NULL REFERENCES purchases(id),
    allocated    INTEGER NOT NULL CHECK (allocated >= 0),
    leased       INTEGER NOT NULL DEFAULT 0 CHECK (leased >= 0 AND leased <= allocated),
    PRIMARY KEY (pool_id, purchase_id)
) WITHOUT ROWID;
CREATE INDEX holdings_purchase ON holdings(purchase_id);

CREATE TABLE moves (
    id          TEXT PRIMARY KEY,
    estate_id   TEXT NOT NULL REFERENCES estates(id),
    from_pool   TEXT NOT NULL,
    to_pool     TEXT NOT NULL,
    items       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX moves_estate ON moves(estate_id, at);

CREATE TABLE auth_codes (
    id          TEXT PRIMARY KEY,
    estate_id   TEXT NOT NULL REFERENCES estates(id),
    pool_id     TEXT NOT NULL REFERENCES pools(id),
    code_mac    BLOB NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('live', 'used', 'revoked')),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    used_at     INTEGER,
    server_id   TEXT
);
CREATE INDEX auth_codes_mac ON auth_codes(code_mac, state);
CREATE INDEX auth_codes_pool ON auth_codes(pool_id, state);

CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    estate_id     TEXT NOT NULL REFERENCES estates(id),
    pool_id       TEXT NOT NULL REFERENCES pools(id),
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('server', 'domain')),
    token_hash    BLOB NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER,
    removed_at    INTEGER
);
CREATE INDEX servers_estate ON servers(estate_id);
CREATE INDEX servers_pool ON servers(pool_id) WHERE removed_at IS NULL;

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    estate_id   TEXT,
    at          INTEGER NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT,
    actor_name  TEXT,
    action      TEXT NOT NULL,
    pool_id     TEXT,
    subject_id  TEXT,
    details     TEXT NOT NULL
);
CREATE INDEX events_estate ON events(estate_id, id);

CREATE TABLE idempotency (
    key_hash      BLOB PRIMARY KEY,
    request_hash  BLOB NOT NULL,
    status        INTEGER NOT NULL,
    nonce         BLOB NOT NULL,
    body          BLOB NOT NULL,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_age ON idempotency(created_at);
