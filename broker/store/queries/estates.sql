-- name: ping
SELECT 1

-- name: estate_insert
INSERT INTO estates (id, name, created_at) VALUES (:id, :name, :now)

-- name: estate_by_id
SELECT id, name, created_at FROM estates WHERE id = :estate_id

-- name: admin_insert
INSERT INTO admins (id, estate_id, name, token_hash, is_primary, created_at)
VALUES (:id, :estate_id, :name, :token_hash, :is_primary, :now)

-- name: admin_by_token
SELECT a.id AS admin_id, a.estate_id, a.name, a.is_primary, e.name AS estate_name
FROM admins a JOIN estates e ON e.id = a.estate_id
WHERE a.token_hash = :token_hash AND a.removed_at IS NULL

-- name: admin_by_id
SELECT id, estate_id, name, is_primary, created_at FROM admins
WHERE id = :admin_id AND estate_id = :estate_id AND removed_at IS NULL

-- name: admins_of_estate
SELECT id, name, is_primary, created_at FROM admins
WHERE estate_id = :estate_id AND removed_at IS NULL
  AND (:after = '' OR (-is_primary, created_at, rowid) >
       (SELECT -is_primary, created_at, rowid FROM admins WHERE id = :after AND estate_id = :estate_id))
ORDER BY is_primary DESC, created_at, rowid
LIMIT :limit

-- name: admin_remove
UPDATE admins SET removed_at = :now WHERE id = :admin_id AND estate_id = :estate_id AND removed_at IS NULL

-- name: event_insert
INSERT INTO events (estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details)
VALUES (:estate_id, :at, :actor_kind, :actor_id, :actor_name, :action, :pool_id, :subject_id, :details)

-- name: events_page
-- Oldest first, from just after the cursor :after (0: from the start).
SELECT id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details
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
SELECT id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details
FROM events
WHERE estate_id = :estate_id AND id < :before
  AND (:pool_id IS NULL OR pool_id = :pool_id
       OR (action = 'licences.moved' AND json_extract(details, '$.from_pool') = :pool_id))
  AND (:action IS NULL OR action = :action OR action LIKE :action || '.%')
ORDER BY id DESC LIMIT :limit

-- name: idempotency_get
SELECT request_hash, status, nonce, body, created_at FROM idempotency WHERE key_hash = :key_hash

-- name: idempotency_put
INSERT INTO idempotency (key_hash, request_hash, status, nonce, body, created_at)
VALUES (:key_hash, :request_hash, :status, :nonce, :body, :now)

-- name: idempotency_delete
DELETE FROM idempotency WHERE key_hash = :key_hash

-- name: idempotency_purge
DELETE FROM idempotency WHERE created_at < :before
