-- The audit log (broker/audit.py).

-- name: event_insert
INSERT INTO events (estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details)
VALUES (:estate_id, :at, :actor_kind, :actor_id, :actor_name, :action, :pool_id, :subject_id, :details)

-- name: events_page
-- Oldest first, from just after the cursor :after (0: from the start).
SELECT id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details
FROM events
WHERE estate_id = :estate_id AND id > :after
  AND (CAST(:pool_id AS TEXT) IS NULL OR pool_id = :pool_id
       -- a move is filed under its target; licences leaving a pool are its history too
       OR (action = 'licences.moved' AND (details::jsonb ->> 'from_pool') = :pool_id))
  AND (CAST(:action AS TEXT) IS NULL OR action = :action OR action LIKE CAST(:action AS TEXT) || '.%')
ORDER BY id LIMIT :limit

-- name: events_page_desc
-- Newest first, from just before the cursor :before (the caller passes a number above
-- every id to start from the newest). The same filters as events_page; the direction is
-- its own query so that both walk the (estate_id, id) index instead of sorting.
SELECT id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details
FROM events
WHERE estate_id = :estate_id AND id < :before
  AND (CAST(:pool_id AS TEXT) IS NULL OR pool_id = :pool_id
       OR (action = 'licences.moved' AND (details::jsonb ->> 'from_pool') = :pool_id))
  AND (CAST(:action AS TEXT) IS NULL OR action = :action OR action LIKE CAST(:action AS TEXT) || '.%')
ORDER BY id DESC LIMIT :limit
