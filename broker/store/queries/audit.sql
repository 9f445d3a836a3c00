-- The audit log (broker/audit.py).

-- name: event_append
-- The event, chained onto the estate's newest event in the same statement
-- (broker.audit.record): prev_hash is that event's hash (:genesis for the estate's first)
-- and hash is SHA-256 over prev_hash's ASCII bytes followed by :canonical, as
-- broker.audit.link computes it (tenure_chain_link, which broker.store.sqlite.connect
-- registers on every connection). When that newest event has no hash yet (written before
-- the chain), both links are left NULL and hash comes back NULL: the caller then chains
-- the estate's unchained events, this one last. VALUES with scalar subqueries, not
-- INSERT … SELECT FROM events: SQLite would copy the SELECT into a temporary table first
-- (reading the table it inserts into), which cost more than a second statement.
INSERT INTO events (estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details,
                    prev_hash, hash)
VALUES (:estate_id, :at, :actor_kind, :actor_id, :actor_name, :action, :pool_id, :subject_id, :details,
        NULLIF(COALESCE((SELECT IFNULL(hash, '') FROM events WHERE estate_id = :estate_id ORDER BY id DESC LIMIT 1),
                        :genesis), ''),
        tenure_chain_link(COALESCE((SELECT IFNULL(hash, '') FROM events WHERE estate_id = :estate_id
                                    ORDER BY id DESC LIMIT 1), :genesis), :canonical))
RETURNING hash

-- name: event_hash_before
SELECT hash FROM events WHERE estate_id = :estate_id AND id < :before ORDER BY id DESC LIMIT 1

-- name: events_unchained
-- Events written before the chain existed (migration 0006), oldest first.
SELECT id, estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details,
       prev_hash, hash
FROM events WHERE hash IS NULL AND estate_id IS NOT NULL ORDER BY id LIMIT :limit

-- name: events_unchained_of_estate
SELECT id, estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details,
       prev_hash, hash
FROM events WHERE estate_id = :estate_id AND hash IS NULL ORDER BY id

-- name: event_chain
UPDATE events SET prev_hash = :prev_hash, hash = :hash WHERE id = :id AND hash IS NULL

-- name: events_page
-- Oldest first, from just after the cursor :after (0: from the start).
SELECT id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details, prev_hash, hash
FROM events
WHERE estate_id = :estate_id AND id > :after
  AND (:pool_id IS NULL OR pool_id = :pool_id
       -- a move is filed under its target; licences leaving a pool are its history too
       OR (action = 'licences.moved' AND json_extract(details, '$.from_pool') = :pool_id))
  AND (:action IS NULL OR action = :action OR action LIKE :action || '.%')
ORDER BY id LIMIT :limit

-- name: events_page_desc
-- Newest first, from just before the cursor :before (the caller passes a number above
-- every id to start from the newest). The same filters as events_page; the direction is
-- its own query so that both walk the (estate_id, id) index instead of sorting.
SELECT id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details, prev_hash, hash
FROM events
WHERE estate_id = :estate_id AND id < :before
  AND (:pool_id IS NULL OR pool_id = :pool_id
       OR (action = 'licences.moved' AND json_extract(details, '$.from_pool') = :pool_id))
  AND (:action IS NULL OR action = :action OR action LIKE :action || '.%')
ORDER BY id DESC LIMIT :limit

-- name: event_chain_start
-- Where a walk along the estate's chain from just past :after starts: the estate's event
-- at or before it.
SELECT id, hash FROM events WHERE estate_id = :estate_id AND id <= :after ORDER BY id DESC LIMIT 1

-- name: events_chain_page
-- One estate's events in chain order, a page at a time (audit.walk).
SELECT id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details, prev_hash, hash
FROM events WHERE estate_id = :estate_id AND id > :after ORDER BY id LIMIT :limit
