-- The audit log becomes tamper-evident: each estate's events form a SHA-256 hash chain
-- (broker/audit.py; the hashed bytes are defined in docs/design.md). As SQLite's 0006:
-- events written before this version are chained by the broker at start.
ALTER TABLE events ADD COLUMN prev_hash TEXT;
ALTER TABLE events ADD COLUMN hash TEXT;
