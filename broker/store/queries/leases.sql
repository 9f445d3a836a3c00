-- Leases and the seats they hold (broker/leases.py).

-- name: grant_context
-- Everything an acquire reads before it decides, in one statement (docs/performance.md,
-- "Fewer statements per grant"). A row with part 'binding': the server's pool as the
-- database has it now (none when the server was removed or rebound away, or its pool
-- deleted), whether the encoder's soft-lock window has started in it, whether any server
-- of the pool has limits, and the encoder's active lease if it has one (the l columns,
-- NULL when not). Then a row with part 'due' per lease of the pool past exp, as
-- leases_due_in_pool reads them. CROSS JOIN pins has_limits' plan as limits_in_pool's:
-- the few limit rows are walked, not the pool's servers (20,000 of them at scale).
SELECT 'binding' AS part, s.pool_id AS binding_pool_id, p.lease_seconds, p.soft_lock_hardware,
       p.soft_lock_container,
       EXISTS (SELECT 1 FROM encoder_windows w WHERE w.pool_id = s.pool_id AND w.encoder = :encoder)
         AS window_started,
       EXISTS (SELECT 1 FROM server_limits sl CROSS JOIN servers ls ON ls.id = sl.server_id
               WHERE ls.pool_id = s.pool_id AND ls.removed_at IS NULL) AS has_limits,
       l.id, l.estate_id, l.pool_id, l.server_id, l.encoder, l.licence_type, l.count, l.state, l.created_at,
       l.renewed_at, l.expires_at, l.end_reason
FROM servers s JOIN pools p ON p.id = s.pool_id
LEFT JOIN leases l ON l.server_id = s.id AND l.encoder = :encoder AND l.state = 'active'
WHERE s.id = :server_id AND s.estate_id = :estate_id AND s.removed_at IS NULL AND p.deleted_at IS NULL
UNION ALL
SELECT 'due', NULL, NULL, NULL, NULL, NULL, NULL,
       l.id, l.estate_id, l.pool_id, l.server_id, l.encoder, l.licence_type, l.count, l.state, l.created_at,
       l.renewed_at, l.expires_at, l.end_reason
FROM servers s JOIN leases l ON l.pool_id = s.pool_id
WHERE s.id = :server_id AND l.state = 'active' AND l.expires_at <= :now

-- name: lease_context
-- What a renewal or release reads first, in one statement: the server's pool as the
-- database has it now (no row when the server was removed or its pool deleted), the
-- server's lease :lease_id (the l columns, NULL when there is none), and one row per seat
-- of the lease (the seat columns, as lease_seats reads them; NULL when it holds none).
SELECT s.pool_id AS binding_pool_id, p.lease_seconds,
       l.id, l.estate_id, l.pool_id, l.server_id, l.encoder, l.licence_type, l.count, l.state, l.created_at,
       l.renewed_at, l.expires_at, l.end_reason,
       ls.purchase_id, ls.count AS seat_count, pu.sales_order, pu.licence_type AS seat_licence_type,
       pu.expires_at AS seat_expires_at, pu.status AS seat_status, pu.held_at AS seat_held_at
FROM servers s JOIN pools p ON p.id = s.pool_id
LEFT JOIN leases l ON l.id = :lease_id AND l.server_id = s.id
LEFT JOIN lease_seats ls ON ls.lease_id = l.id
LEFT JOIN purchases pu ON pu.id = ls.purchase_id
WHERE s.id = :server_id AND s.estate_id = :estate_id AND s.removed_at IS NULL AND p.deleted_at IS NULL
ORDER BY pu.expires_at, pu.id

-- name: lease_seats
SELECT s.purchase_id, s.count, p.sales_order, p.licence_type, p.expires_at, p.status, p.held_at
FROM lease_seats s JOIN purchases p ON p.id = s.purchase_id
WHERE s.lease_id = :lease_id ORDER BY p.expires_at, p.id

-- name: grantable_holdings
SELECT h.purchase_id, h.allocated, h.leased, p.sales_order, p.expires_at, p.status, p.held_at
FROM holdings h JOIN purchases p ON p.id = h.purchase_id
WHERE h.pool_id = :pool_id AND p.licence_type = :licence_type AND p.status = 'valid'
  AND p.expires_at > :now AND h.allocated > h.leased
ORDER BY p.expires_at, p.id

-- name: licence_types_of_pool
SELECT DISTINCT p.licence_type FROM holdings h JOIN purchases p ON p.id = h.purchase_id
WHERE h.pool_id = :pool_id AND h.allocated > 0
ORDER BY p.licence_type

-- name: holding_lease
UPDATE holdings SET leased = leased + :count
WHERE pool_id = :pool_id AND purchase_id = :purchase_id AND leased + :count <= allocated

-- name: holding_unlease
UPDATE holdings SET leased = leased - :count WHERE pool_id = :pool_id AND purchase_id = :purchase_id

-- name: lease_insert
INSERT INTO leases (id, estate_id, pool_id, server_id, encoder, licence_type, count, state,
                    created_at, renewed_at, expires_at)
VALUES (:id, :estate_id, :pool_id, :server_id, :encoder, :licence_type, :count, 'active',
        :now, :now, :expires_at)

-- name: lease_seat_add
INSERT INTO lease_seats (lease_id, purchase_id, pool_id, count) VALUES (:lease_id, :purchase_id, :pool_id, :count)
ON CONFLICT (lease_id, purchase_id) DO UPDATE SET count = count + excluded.count

-- name: lease_seat_set
UPDATE lease_seats SET count = :count WHERE lease_id = :lease_id AND purchase_id = :purchase_id

-- name: lease_seat_delete
DELETE FROM lease_seats WHERE lease_id = :lease_id AND purchase_id = :purchase_id

-- name: lease_update
UPDATE leases SET count = :count, licence_type = :licence_type, renewed_at = :now, expires_at = :expires_at
WHERE id = :lease_id AND state = 'active'

-- name: lease_end
UPDATE leases SET state = :state, ended_at = :now, end_reason = :reason
WHERE id = :lease_id AND state = 'active'

-- name: leases_due_in_pool
SELECT id, estate_id, pool_id, server_id, encoder, licence_type, count, expires_at
FROM leases WHERE pool_id = :pool_id AND state = 'active' AND expires_at <= :now

-- name: leases_due
SELECT id, estate_id, pool_id, server_id, encoder, licence_type, count, expires_at
FROM leases WHERE state = 'active' AND expires_at <= :now ORDER BY expires_at LIMIT :limit

-- name: leases_active_of_server
SELECT id, estate_id, pool_id, server_id, encoder, licence_type, count, expires_at
FROM leases WHERE server_id = :server_id AND state = 'active'

-- name: leases_of_estate
SELECT l.id, l.pool_id, l.server_id, s.name AS server_name, l.encoder, l.licence_type, l.count,
       l.state, l.created_at, l.renewed_at, l.expires_at, l.end_reason, w.kind AS encoder_kind,
       w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                  ELSE pl.soft_lock_hardware END AS soft_lock_until
FROM leases l JOIN servers s ON s.id = l.server_id
JOIN pools pl ON pl.id = l.pool_id
LEFT JOIN encoder_windows w ON w.pool_id = l.pool_id AND w.encoder = l.encoder
WHERE l.estate_id = :estate_id AND l.state = 'active' AND l.expires_at > :now
  AND l.id > :after
  AND (:pool_id IS NULL OR l.pool_id = :pool_id)
  AND (:server_id IS NULL OR l.server_id = :server_id)
  AND (:encoder IS NULL OR l.encoder = :encoder)
ORDER BY l.id LIMIT :limit

-- name: lease_of_estate
SELECT id, estate_id, pool_id, server_id, encoder, licence_type, count, state, expires_at
FROM leases WHERE id = :lease_id AND estate_id = :estate_id
