-- Webhooks (broker/webhooks/): an estate's endpoints, the events they are sent, the
-- outbox of deliveries (written in the same transaction as the event) and every attempt.
-- An endpoint's signing secret is sealed under the deployment's secret key, as key
-- material is (broker/secretkey.py): it must be usable for HMAC, so it cannot be hashed.
-- IF NOT EXISTS: a database whose version was set back (a restored or hand-mended one)
-- may hold these tables already, and they are the same.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id               TEXT PRIMARY KEY,
    estate_id        TEXT NOT NULL REFERENCES estates(id),
    url              TEXT NOT NULL,
    events           TEXT NOT NULL,             -- JSON array of event types
    created_at       INTEGER NOT NULL,
    secret_created   INTEGER NOT NULL,          -- bound into the seal: a rotation makes a new one
    secret_sealed    BLOB NOT NULL,
    old_created      INTEGER,                   -- the secret before the last rotation, still
    old_sealed       BLOB,                      -- signed with until old_until
    old_until        INTEGER,
    failures         INTEGER NOT NULL DEFAULT 0, -- failed attempts since the last 2xx
    last_success_at  INTEGER,
    last_failure_at  INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_estate ON webhook_endpoints(estate_id, id);

CREATE TABLE IF NOT EXISTS webhook_events (
    id         TEXT PRIMARY KEY,                -- the webhook-id header and the payload's id
    estate_id  TEXT NOT NULL REFERENCES estates(id),
    type       TEXT NOT NULL,
    at         INTEGER NOT NULL,
    body       TEXT NOT NULL                    -- the exact bytes signed and sent
);

CREATE TABLE IF NOT EXISTS webhook_outbox (
    id             TEXT PRIMARY KEY,
    endpoint_id    TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id       TEXT NOT NULL REFERENCES webhook_events(id),
    state          TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_at        INTEGER NOT NULL,
    claim          TEXT,
    claimed_until  INTEGER,
    created_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox(state, next_at);
CREATE INDEX IF NOT EXISTS webhook_outbox_endpoint ON webhook_outbox(endpoint_id);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id  TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    outbox_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    status_code  INTEGER,
    latency_ms   INTEGER NOT NULL,
    error        TEXT,
    outcome      TEXT NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed'))
);
CREATE INDEX IF NOT EXISTS webhook_attempts_endpoint ON webhook_attempts(endpoint_id, id);

-- Events that fire once: a unique key per (purchase, event, expiry), or a quiet period
-- per (pool, licence type) for pool.exhausted; inserted in the transaction that writes
-- the event, so that any number of replicas fire each once.
CREATE TABLE IF NOT EXISTS webhook_marks (
    key    TEXT PRIMARY KEY,
    until  INTEGER                              -- NULL: for ever
);

-- The expiry scheduler's scan (purchases due a stage), across estates.
CREATE INDEX IF NOT EXISTS purchases_expiry ON purchases(expires_at);
