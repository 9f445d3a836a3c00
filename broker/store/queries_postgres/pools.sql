-- Pools, their holdings, and moves between them (broker/pools.py).

-- name: pool_insert
INSERT INTO pools (id, estate_id, name, name_key, is_default, lease_seconds, created_at)
VALUES (:id, :estate_id, :name, :name_key, :is_default, :lease_seconds, :now)

-- name: pool_by_id
SELECT id, estate_id, name, is_default, lease_seconds, soft_lock_hardware, soft_lock_container, created_at FROM pools
WHERE id = :pool_id AND estate_id = :estate_id AND deleted_at IS NULL

-- name: pool_by_name_key
SELECT id FROM pools WHERE estate_id = :estate_id AND name_key = :name_key AND deleted_at IS NULL

-- name: default_pool
SELECT id, estate_id, name, is_default, lease_seconds, soft_lock_hardware, soft_lock_container, created_at FROM pools
WHERE estate_id = :estate_id AND is_default = 1 AND deleted_at IS NULL

-- name: pools_of_estate
SELECT id, estate_id, name, is_default, lease_seconds, soft_lock_hardware, soft_lock_container, created_at FROM pools
WHERE estate_id = :estate_id AND deleted_at IS NULL ORDER BY is_default DESC, name_key, id

-- name: pools_page
SELECT id, estate_id, name, is_default, lease_seconds, soft_lock_hardware, soft_lock_container, created_at FROM pools
WHERE estate_id = :estate_id AND deleted_at IS NULL
  AND (:after = '' OR (-is_default, name_key, id) >
       (SELECT -is_default, name_key, id FROM pools WHERE id = :after AND estate_id = :estate_id))
ORDER BY is_default DESC, name_key, id
LIMIT :limit

-- name: pool_update
UPDATE pools SET name = :name, name_key = :name_key, lease_seconds = :lease_seconds
WHERE id = :pool_id AND estate_id = :estate_id

-- name: pool_delete
UPDATE pools SET deleted_at = :now WHERE id = :pool_id AND estate_id = :estate_id

-- name: holding_get
SELECT allocated, leased FROM holdings WHERE pool_id = :pool_id AND purchase_id = :purchase_id

-- name: holding_add
INSERT INTO holdings (pool_id, purchase_id, allocated, leased) VALUES (:pool_id, :purchase_id, :count, 0)
ON CONFLICT (pool_id, purchase_id) DO UPDATE SET allocated = holdings.allocated + :count

-- name: holding_take
UPDATE holdings SET allocated = allocated - :count
WHERE pool_id = :pool_id AND purchase_id = :purchase_id AND allocated - leased >= :count

-- name: holdings_of_pool
SELECT h.purchase_id, h.allocated, h.leased, p.sales_order, p.licence_type, p.quantity,
       p.expires_at, p.status, p.held_at
FROM holdings h JOIN purchases p ON p.id = h.purchase_id
WHERE h.pool_id = :pool_id AND h.allocated > 0 ORDER BY p.expires_at, p.sales_order, p.id

-- name: holdings_of_estate
SELECT h.pool_id, h.purchase_id, h.allocated, h.leased, p.sales_order, p.licence_type, p.quantity,
       p.expires_at, p.status, p.held_at
FROM holdings h JOIN purchases p ON p.id = h.purchase_id
WHERE p.estate_id = :estate_id AND h.allocated > 0 ORDER BY p.expires_at, p.sales_order, p.id

-- name: holdings_move_all_to
INSERT INTO holdings (pool_id, purchase_id, allocated, leased)
SELECT :to_pool, purchase_id, allocated, 0 FROM holdings WHERE pool_id = :from_pool AND allocated > 0
ON CONFLICT (pool_id, purchase_id) DO UPDATE SET allocated = holdings.allocated + excluded.allocated

-- name: holdings_clear
DELETE FROM holdings WHERE pool_id = :pool_id

-- name: dead_seats_of_estate
SELECT s.pool_id, s.purchase_id, SUM(s.count) AS n FROM leases l JOIN lease_seats s ON s.lease_id = l.id
WHERE l.estate_id = :estate_id AND l.state = 'active' AND l.expires_at <= :now
GROUP BY s.pool_id, s.purchase_id

-- name: revoked_unexpired_of_estate
SELECT pool_id, SUM(count) AS n FROM leases
WHERE estate_id = :estate_id AND state = 'revoked' AND expires_at > :now GROUP BY pool_id

-- name: dead_seats_of_pool
SELECT s.purchase_id, SUM(s.count) AS n FROM leases l JOIN lease_seats s ON s.lease_id = l.id
WHERE l.pool_id = :pool_id AND l.state = 'active' AND l.expires_at <= :now AND s.pool_id = :pool_id
GROUP BY s.purchase_id

-- name: revoked_unexpired_of_pool
SELECT COALESCE(SUM(count), 0) AS n FROM leases
WHERE pool_id = :pool_id AND state = 'revoked' AND expires_at > :now

-- name: pool_counts
SELECT
  (SELECT COUNT(*) FROM servers WHERE pool_id = :pool_id AND removed_at IS NULL) AS servers,
  (SELECT COUNT(*) FROM leases WHERE pool_id = :pool_id AND state = 'active' AND expires_at > :now) AS leases

-- name: move_insert
INSERT INTO moves (id, estate_id, from_pool, to_pool, items, actor, at)
VALUES (:id, :estate_id, :from_pool, :to_pool, :items, :actor, :now)
