-- What GET /v1/stream pushes to agents (broker/push/events.py).

-- name: stream_lock
-- PostgreSQL takes a lock here so that event ids become visible in order; one writer at
-- a time already gives SQLite that.
SELECT 1

-- name: stream_event_add
INSERT INTO stream_events (at, type, server_id, pool_id, data)
VALUES (:at, :type, :server_id, :pool_id, :data)

-- name: stream_notify
-- PostgreSQL wakes every replica's listener at COMMIT; a SQLite broker wakes its own streams.
SELECT 1

-- name: stream_pools_leasing_purchase
-- The pools whose live leases hold seats of the purchase (they hear it changed).
SELECT h.pool_id, p.lease_seconds FROM holdings h JOIN pools p ON p.id = h.pool_id
WHERE h.purchase_id = :purchase_id AND h.leased > 0
ORDER BY h.pool_id

-- name: stream_events_of_server
SELECT id, at, type, server_id, pool_id, data FROM stream_events
WHERE id > :after
  AND (server_id = :server_id OR pool_id = :pool_id OR (server_id IS NULL AND pool_id IS NULL))
ORDER BY id
LIMIT :limit

-- name: stream_events_after
SELECT id, at, type, server_id, pool_id, data FROM stream_events WHERE id > :after ORDER BY id LIMIT :limit

-- name: stream_head
SELECT MAX(COALESCE((SELECT MAX(id) FROM stream_events), 0),
           COALESCE((SELECT pruned_through FROM stream_horizon WHERE id = 1), 0)) AS head

-- name: stream_horizon
SELECT COALESCE(MAX(pruned_through), 0) FROM stream_horizon

-- name: stream_prune_point
-- The highest id to prune: every event older than :before, and all but the newest :keep.
SELECT MAX(COALESCE((SELECT MAX(id) FROM stream_events WHERE at < :before), 0),
           COALESCE((SELECT id FROM stream_events ORDER BY id DESC LIMIT 1 OFFSET :keep), 0)) AS through

-- name: stream_prune
DELETE FROM stream_events WHERE id <= :through

-- name: stream_horizon_set
INSERT INTO stream_horizon (id, pruned_through) VALUES (1, :through)
ON CONFLICT (id) DO UPDATE SET pruned_through = MAX(stream_horizon.pruned_through, excluded.pruned_through)
