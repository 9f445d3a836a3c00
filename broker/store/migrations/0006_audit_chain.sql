-- The audit log becomes tamper-evident: each estate's events form a SHA-256 hash chain
-- (broker/audit.py; the hashed bytes are defined in docs/design.md, "Audit log").
-- ``hash`` is the event's own link, ``prev_hash`` the link of the estate's event before
-- it (64 zeros for its first). SQL has no SHA-256 here, so events written before this
-- version are chained by the broker itself, in id order per estate, in one write at
-- start (``audit.chain_backlog``) before it serves a request; until then their two
-- columns are NULL, and ``tenure-broker check`` names them as not yet chained.
ALTER TABLE events ADD COLUMN prev_hash TEXT;
ALTER TABLE events ADD COLUMN hash TEXT;
