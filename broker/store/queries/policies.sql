-- Licence policies (broker/policies.py): soft-lock windows, held-back seats, and
-- per-server limits and reservations.

-- name: window_start
INSERT INTO encoder_windows (pool_id, encoder, kind, started_at)
VALUES (:pool_id, :encoder, :kind, :now)
ON CONFLICT (pool_id, encoder) DO NOTHING

-- name: window_of_encoder
SELECT w.kind, w.started_at,
       CASE w.kind WHEN 'container' THEN pl.soft_lock_container ELSE pl.soft_lock_hardware END AS seconds
FROM encoder_windows w JOIN pools pl ON pl.id = w.pool_id
WHERE w.pool_id = :pool_id AND w.encoder = :encoder

-- name: soft_lock_add
INSERT INTO soft_locks (pool_id, encoder, purchase_id, count, lease_id)
VALUES (:pool_id, :encoder, :purchase_id, :count, :lease_id)
ON CONFLICT (pool_id, encoder, purchase_id)
DO UPDATE SET count = soft_locks.count + excluded.count, lease_id = excluded.lease_id

-- name: soft_lock_set
UPDATE soft_locks SET count = :count
WHERE pool_id = :pool_id AND encoder = :encoder AND purchase_id = :purchase_id

-- name: soft_lock_delete
DELETE FROM soft_locks WHERE pool_id = :pool_id AND encoder = :encoder AND purchase_id = :purchase_id

-- name: soft_locks_clear_encoder
DELETE FROM soft_locks WHERE pool_id = :pool_id AND encoder = :encoder

-- name: soft_locks_clear_pool
DELETE FROM soft_locks WHERE pool_id = :pool_id

-- name: soft_locks_forget_ended
-- Rows whose window has ended under the pool's setting as it stands: a later, longer
-- setting must not bring back seats that others may have taken since.
DELETE FROM soft_locks
WHERE pool_id = :pool_id AND NOT EXISTS (
  SELECT 1 FROM encoder_windows w JOIN pools pl ON pl.id = w.pool_id
  WHERE w.pool_id = soft_locks.pool_id AND w.encoder = soft_locks.encoder
    AND w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                   ELSE pl.soft_lock_hardware END > :now)

-- name: soft_locks_live_of_pool
SELECT sl.pool_id, sl.encoder, sl.purchase_id, sl.count, sl.lease_id, w.kind, w.started_at,
       w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                  ELSE pl.soft_lock_hardware END AS until,
       p.licence_type, p.expires_at, p.status, p.held_at
FROM soft_locks sl
JOIN encoder_windows w ON w.pool_id = sl.pool_id AND w.encoder = sl.encoder
JOIN pools pl ON pl.id = sl.pool_id
JOIN purchases p ON p.id = sl.purchase_id
WHERE sl.pool_id = :pool_id
  AND w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                 ELSE pl.soft_lock_hardware END > :now
ORDER BY p.expires_at, p.id, sl.encoder

-- name: soft_locks_live_of_type
-- Per purchase of the type, the seats held now for :encoder and for every other encoder.
SELECT sl.purchase_id,
       SUM(CASE WHEN sl.encoder = :encoder THEN sl.count ELSE 0 END) AS mine,
       SUM(CASE WHEN sl.encoder = :encoder THEN 0 ELSE sl.count END) AS others
FROM soft_locks sl
JOIN encoder_windows w ON w.pool_id = sl.pool_id AND w.encoder = sl.encoder
JOIN pools pl ON pl.id = sl.pool_id
JOIN purchases p ON p.id = sl.purchase_id
WHERE sl.pool_id = :pool_id AND p.licence_type = :licence_type
  AND w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                 ELSE pl.soft_lock_hardware END > :now
GROUP BY sl.purchase_id

-- name: soft_locks_live_of_estate
SELECT sl.pool_id, sl.encoder, sl.purchase_id, sl.count, sl.lease_id, w.kind, w.started_at,
       w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                  ELSE pl.soft_lock_hardware END AS until,
       p.licence_type, p.expires_at, p.status, p.held_at
FROM soft_locks sl
JOIN encoder_windows w ON w.pool_id = sl.pool_id AND w.encoder = sl.encoder
JOIN pools pl ON pl.id = sl.pool_id
JOIN purchases p ON p.id = sl.purchase_id
WHERE pl.estate_id = :estate_id AND pl.deleted_at IS NULL
  AND w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                 ELSE pl.soft_lock_hardware END > :now
ORDER BY p.expires_at, p.id, sl.encoder

-- name: encoder_windows_clear_pool
DELETE FROM encoder_windows WHERE pool_id = :pool_id

-- name: pool_soft_lock_set
UPDATE pools SET soft_lock_hardware = :hardware, soft_lock_container = :container
WHERE id = :pool_id AND estate_id = :estate_id

-- name: limits_in_pool
-- Every limit of the servers bound to the pool, with what each server's encoders hold of
-- that type now. Every acquire reads it, so the plan is pinned: CROSS JOIN makes SQLite
-- walk the few limit rows, not the pool's servers (20,000 of them at scale: 0.5 s an
-- acquire), and `+l.pool_id` sends the sum through the server's own leases
-- (leases_encoder), not the pool's (leases_pool_expiry).
SELECT sl.server_id, s.name AS server_name, sl.licence_type, sl.max_seats, sl.reserved,
       COALESCE((SELECT SUM(l.count) FROM leases l
                 WHERE l.server_id = sl.server_id AND +l.pool_id = s.pool_id
                   AND l.licence_type = sl.licence_type AND l.state = 'active'
                   AND l.expires_at > :now), 0) AS in_use
FROM server_limits sl CROSS JOIN servers s ON s.id = sl.server_id
WHERE s.pool_id = :pool_id AND s.removed_at IS NULL
ORDER BY sl.licence_type, s.name, sl.server_id

-- name: limits_of_server
SELECT licence_type, max_seats, reserved FROM server_limits
WHERE server_id = :server_id ORDER BY licence_type

-- name: server_limit_set
INSERT INTO server_limits (server_id, licence_type, max_seats, reserved)
VALUES (:server_id, :licence_type, :max_seats, :reserved)
ON CONFLICT (server_id, licence_type)
DO UPDATE SET max_seats = excluded.max_seats, reserved = excluded.reserved

-- name: server_limit_delete
DELETE FROM server_limits WHERE server_id = :server_id AND licence_type = :licence_type

-- name: pool_allocated_by_type
SELECT p.licence_type, SUM(h.allocated) AS allocated, SUM(h.leased) AS leased
FROM holdings h JOIN purchases p ON p.id = h.purchase_id
WHERE h.pool_id = :pool_id
GROUP BY p.licence_type
