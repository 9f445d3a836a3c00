-- What GET /v1/stream pushes to agents (broker/push/events.py).

-- name: stream_lock
-- Held to COMMIT: writers draw ids one at a time, so ids become visible in order (a
-- reader that has seen id N never later finds a smaller one committed).
-- The key is 0x74656E7572650002 ("tenure" + 2; the migration lock is + 1).
SELECT pg_advisory_xact_lock(8387231331756867586)

-- name: stream_event_add
INSERT INTO stream_events (at, type, server_id, pool_id, data)
VALUES (:at, :type, :server_id, :pool_id, :data)

-- name: stream_notify
-- Delivered to every replica's listener at COMMIT (broker/store/listen.py), not before.
SELECT pg_notify('tenure_stream', '')

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
SELECT GREATEST(COALESCE((SELECT MAX(id) FROM stream_events), 0),
           COALESCE((SELECT pruned_through FROM stream_horizon WHERE id = 1), 0)) AS head

-- name: stream_horizon
SELECT COALESCE(MAX(pruned_through), 0) FROM stream_horizon

-- name: stream_prune_point
-- The highest id to prune: every event older than :before, and all but the newest :keep.
SELECT GREATEST(COALESCE((SELECT MAX(id) FROM stream_events WHERE at < :before), 0),
           COALESCE((SELECT id FROM stream_events ORDER BY id DESC LIMIT 1 OFFSET :keep), 0)) AS through

-- name: stream_prune
DELETE FROM stream_events WHERE id <= :through

-- name: stream_horizon_set
INSERT INTO stream_horizon (id, pruned_through) VALUES (1, :through)
ON CONFLICT (id) DO UPDATE SET pruned_through = GREATEST(stream_horizon.pruned_through, excluded.pruned_through)
