-- tenure-broker check: every invariant recomputed from the rows (broker/books.py).
-- Each query returns only what is wrong, so a sound database answers nothing. Plain SQL
-- (no JSON, no rowid), for any store.

-- name: books_counts
SELECT
  (SELECT COUNT(*) FROM estates) AS estates,
  (SELECT COUNT(*) FROM purchases) AS purchases,
  (SELECT COUNT(*) FROM leases WHERE state = 'active') AS active_leases,
  (SELECT COUNT(*) FROM events) AS events

-- name: books_estates
SELECT id FROM estates ORDER BY id

-- name: books_purchase_totals
-- Invariant 1: a purchase's holdings, over every pool, add up to its quantity.
SELECT p.id, p.estate_id, p.sales_order, p.quantity, COALESCE(SUM(h.allocated), 0) AS held
FROM purchases p LEFT JOIN holdings h ON h.purchase_id = p.id
GROUP BY p.id, p.estate_id, p.sales_order, p.quantity
HAVING COALESCE(SUM(h.allocated), 0) <> p.quantity
ORDER BY p.estate_id, p.id

-- name: books_holdings_bounds
-- Invariant 2: 0 <= leased <= allocated (the table's CHECK, unless it was bypassed).
SELECT h.pool_id, h.purchase_id, h.allocated, h.leased, pl.estate_id
FROM holdings h LEFT JOIN pools pl ON pl.id = h.pool_id
WHERE h.leased > h.allocated OR h.leased < 0 OR h.allocated < 0
ORDER BY pl.estate_id, h.pool_id, h.purchase_id

-- name: books_holdings_leased
-- A holding's ``leased`` is the seats its active leases hold of it.
SELECT h.pool_id, h.purchase_id, h.leased, COALESCE(a.n, 0) AS seats, pl.estate_id
FROM holdings h
LEFT JOIN (SELECT s.pool_id, s.purchase_id, SUM(s.count) AS n
           FROM lease_seats s JOIN leases l ON l.id = s.lease_id
           WHERE l.state = 'active'
           GROUP BY s.pool_id, s.purchase_id) a
  ON a.pool_id = h.pool_id AND a.purchase_id = h.purchase_id
LEFT JOIN pools pl ON pl.id = h.pool_id
WHERE h.leased <> COALESCE(a.n, 0)
ORDER BY pl.estate_id, h.pool_id, h.purchase_id

-- name: books_seats_without_holding
SELECT s.pool_id, s.purchase_id, SUM(s.count) AS n, l.estate_id
FROM lease_seats s JOIN leases l ON l.id = s.lease_id
WHERE l.state = 'active'
  AND NOT EXISTS (SELECT 1 FROM holdings h WHERE h.pool_id = s.pool_id AND h.purchase_id = s.purchase_id)
GROUP BY l.estate_id, s.pool_id, s.purchase_id
ORDER BY l.estate_id, s.pool_id, s.purchase_id

-- name: books_lease_counts
-- An active lease's count is the sum of its seats.
SELECT l.id, l.estate_id, l.count, COALESCE(SUM(s.count), 0) AS seats
FROM leases l LEFT JOIN lease_seats s ON s.lease_id = l.id
WHERE l.state = 'active'
GROUP BY l.id, l.estate_id, l.count
HAVING l.count <> COALESCE(SUM(s.count), 0)
ORDER BY l.estate_id, l.id

-- name: books_seats_astray
-- An active lease's seats are of its own pool, licence type and estate.
SELECT l.id AS lease_id, l.estate_id, l.pool_id AS lease_pool, l.licence_type AS lease_type,
       s.purchase_id, s.pool_id AS seat_pool, p.id AS found, p.licence_type AS purchase_type,
       p.estate_id AS purchase_estate
FROM lease_seats s JOIN leases l ON l.id = s.lease_id
LEFT JOIN purchases p ON p.id = s.purchase_id
WHERE l.state = 'active'
  AND (p.id IS NULL OR s.pool_id <> l.pool_id OR p.licence_type <> l.licence_type OR p.estate_id <> l.estate_id)
ORDER BY l.estate_id, l.id, s.purchase_id

-- name: books_leases_beyond_validity
-- Invariant 7: no live lease runs past the grace end of a purchase it holds seats of, and
-- none was granted from a purchase while it was on hold (a later second than the hold: times
-- are whole seconds, and a grant in the same second may have come first). The grace rule is
-- broker/purchases.py's grace_end: expiry + :grace, or the hold + :grace if sooner.
SELECT l.id AS lease_id, l.estate_id, l.encoder, l.created_at, l.expires_at AS lease_expires_at,
       p.id AS purchase_id, p.sales_order, p.status, p.held_at, p.expires_at
FROM leases l JOIN lease_seats s ON s.lease_id = l.id JOIN purchases p ON p.id = s.purchase_id
WHERE l.state = 'active' AND l.expires_at > :now
  AND (l.expires_at > p.expires_at + :grace
       OR (p.status = 'on_hold' AND p.held_at IS NOT NULL
           AND (l.expires_at > p.held_at + :grace OR l.created_at > p.held_at)))
ORDER BY l.estate_id, l.id, p.id

-- name: books_seats_without_lease
SELECT s.lease_id, s.purchase_id, s.count, pl.estate_id
FROM lease_seats s LEFT JOIN pools pl ON pl.id = s.pool_id
WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = s.lease_id)
ORDER BY pl.estate_id, s.lease_id, s.purchase_id

-- name: books_holdings_astray
-- Seats held by a pool that is deleted or gone, of a purchase that is gone, or across estates.
SELECT h.pool_id, h.purchase_id, h.allocated, h.leased, pl.id AS pool_found, pl.deleted_at,
       pl.estate_id AS pool_estate, pu.id AS purchase_found, pu.estate_id AS purchase_estate
FROM holdings h
LEFT JOIN pools pl ON pl.id = h.pool_id
LEFT JOIN purchases pu ON pu.id = h.purchase_id
WHERE (h.allocated > 0 OR h.leased > 0)
  AND (pl.id IS NULL OR pl.deleted_at IS NOT NULL OR pu.id IS NULL OR pl.estate_id <> pu.estate_id)
ORDER BY pl.estate_id, h.pool_id, h.purchase_id

-- name: books_servers_astray
-- A server still enrolled is bound to a live pool of its own estate.
SELECT s.id, s.estate_id, s.name, s.pool_id, pl.id AS pool_found, pl.deleted_at, pl.estate_id AS pool_estate
FROM servers s LEFT JOIN pools pl ON pl.id = s.pool_id
WHERE s.removed_at IS NULL
  AND (pl.id IS NULL OR pl.deleted_at IS NOT NULL OR pl.estate_id <> s.estate_id)
ORDER BY s.estate_id, s.id

-- name: books_codes_astray
-- Deleting a pool revokes its live codes: a live code names a live pool.
SELECT c.id, c.estate_id, c.pool_id, pl.id AS pool_found, pl.deleted_at
FROM auth_codes c LEFT JOIN pools pl ON pl.id = c.pool_id
WHERE c.state = 'live' AND (pl.id IS NULL OR pl.deleted_at IS NOT NULL)
ORDER BY c.estate_id, c.id

-- name: books_leases_astray
-- An active lease is of an enrolled server, in a live pool, the pool the server is bound to.
SELECT l.id, l.estate_id, l.server_id, l.pool_id, sv.id AS server_found, sv.removed_at,
       sv.pool_id AS server_pool, pl.id AS pool_found, pl.deleted_at
FROM leases l
LEFT JOIN servers sv ON sv.id = l.server_id
LEFT JOIN pools pl ON pl.id = l.pool_id
WHERE l.state = 'active'
  AND (sv.id IS NULL OR sv.removed_at IS NOT NULL OR sv.pool_id <> l.pool_id
       OR pl.id IS NULL OR pl.deleted_at IS NOT NULL)
ORDER BY l.estate_id, l.id

-- name: books_default_pools
-- Every estate has exactly one Default Pool, never deleted.
SELECT e.id, COUNT(p.id) AS n
FROM estates e LEFT JOIN pools p ON p.estate_id = e.id AND p.is_default = 1 AND p.deleted_at IS NULL
GROUP BY e.id
HAVING COUNT(p.id) <> 1
ORDER BY e.id

-- name: books_rows_without_estate
SELECT 'pool' AS kind, id, estate_id FROM pools
WHERE NOT EXISTS (SELECT 1 FROM estates e WHERE e.id = pools.estate_id)
UNION ALL
SELECT 'purchase', id, estate_id FROM purchases
WHERE NOT EXISTS (SELECT 1 FROM estates e WHERE e.id = purchases.estate_id)
UNION ALL
SELECT 'admin', id, estate_id FROM admins
WHERE NOT EXISTS (SELECT 1 FROM estates e WHERE e.id = admins.estate_id)
UNION ALL
SELECT 'server', id, estate_id FROM servers
WHERE NOT EXISTS (SELECT 1 FROM estates e WHERE e.id = servers.estate_id)
UNION ALL
SELECT 'lease', id, estate_id FROM leases
WHERE NOT EXISTS (SELECT 1 FROM estates e WHERE e.id = leases.estate_id)
UNION ALL
SELECT 'code', id, estate_id FROM auth_codes
WHERE NOT EXISTS (SELECT 1 FROM estates e WHERE e.id = auth_codes.estate_id)
UNION ALL
SELECT 'event', CAST(id AS TEXT), estate_id FROM events
WHERE estate_id IS NULL OR NOT EXISTS (SELECT 1 FROM estates e WHERE e.id = events.estate_id)
ORDER BY 1, 2

-- name: books_reservations_beyond_holding
-- Licence policies: a pool's reservations of a type never exceed its holding of the type.
SELECT s.pool_id, l.licence_type, SUM(l.reserved) AS reserved, pl.estate_id,
       COALESCE((SELECT SUM(h.allocated) FROM holdings h JOIN purchases p ON p.id = h.purchase_id
                 WHERE h.pool_id = s.pool_id AND p.licence_type = l.licence_type), 0) AS holding
FROM server_limits l JOIN servers s ON s.id = l.server_id LEFT JOIN pools pl ON pl.id = s.pool_id
WHERE s.removed_at IS NULL
GROUP BY s.pool_id, l.licence_type, pl.estate_id
HAVING SUM(l.reserved) > COALESCE((SELECT SUM(h.allocated) FROM holdings h JOIN purchases p ON p.id = h.purchase_id
                                   WHERE h.pool_id = s.pool_id AND p.licence_type = l.licence_type), 0)
ORDER BY pl.estate_id, s.pool_id, l.licence_type

-- name: books_held_beyond_holding
-- Seats held for encoders in open windows, with the seats leased, never exceed a holding.
SELECT h.pool_id, h.purchase_id, h.allocated, h.leased, SUM(sl.count) AS held, pl.estate_id
FROM soft_locks sl
JOIN encoder_windows w ON w.pool_id = sl.pool_id AND w.encoder = sl.encoder
JOIN pools pl ON pl.id = sl.pool_id
JOIN holdings h ON h.pool_id = sl.pool_id AND h.purchase_id = sl.purchase_id
WHERE w.started_at + CASE w.kind WHEN 'container' THEN pl.soft_lock_container
                                 ELSE pl.soft_lock_hardware END > :now
GROUP BY h.pool_id, h.purchase_id, h.allocated, h.leased, pl.estate_id
HAVING h.leased + SUM(sl.count) > h.allocated
ORDER BY pl.estate_id, h.pool_id, h.purchase_id

-- name: books_held_astray
-- Held seats of an encoder with no window in that pool, or of a holding that does not exist.
SELECT sl.pool_id, sl.encoder, sl.purchase_id, sl.count, pl.estate_id,
       w.encoder AS window_found, h.pool_id AS holding_found
FROM soft_locks sl
LEFT JOIN pools pl ON pl.id = sl.pool_id
LEFT JOIN encoder_windows w ON w.pool_id = sl.pool_id AND w.encoder = sl.encoder
LEFT JOIN holdings h ON h.pool_id = sl.pool_id AND h.purchase_id = sl.purchase_id
WHERE w.encoder IS NULL OR h.pool_id IS NULL
ORDER BY pl.estate_id, sl.pool_id, sl.encoder, sl.purchase_id
