-- What a request depends on moves out of the broker process, so that several brokers on
-- one database are interchangeable: console sessions (broker/console/sessions.py) and the
-- code-redemption budgets (broker/ratelimit.py).

-- A console session. Keyed by the SHA-256 of its random id (the cookie), never the id;
-- it stands for the admin token whose SHA-256 is token_hash (as admins.token_hash). The
-- CSRF token is derived from the session id, so nothing of it is kept here.
CREATE TABLE console_sessions (
    id_hash       BLOB PRIMARY KEY,
    token_hash    BLOB NOT NULL,
    started_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL
);
CREATE INDEX console_sessions_token ON console_sessions(token_hash, started_at);
CREATE INDEX console_sessions_started ON console_sessions(started_at);

-- A code-redemption attempt within the window: in flight (failed = 0) until it is
-- known to have failed (failed = 1, at = when) or succeeded (the row is deleted).
-- address is the per-address budget's key (IPv4 address, IPv6 /64), network the
-- under-attack budget's (IPv4 /24, IPv6 /48). Rows older than the window are pruned.
CREATE TABLE redemption_attempts (
    id       INTEGER PRIMARY KEY,
    address  TEXT NOT NULL,
    network  TEXT NOT NULL,
    at       REAL NOT NULL,
    failed   INTEGER NOT NULL CHECK (failed IN (0, 1))
);
CREATE INDEX redemption_attempts_address ON redemption_attempts(address, at);
CREATE INDEX redemption_attempts_network ON redemption_attempts(network, at);
CREATE INDEX redemption_attempts_at ON redemption_attempts(at);
