-- Purchases (broker/purchases.py).

-- name: purchase_insert
INSERT INTO purchases (id, estate_id, sales_order, licence_type, quantity, expires_at, status, held_at, created_at)
VALUES (:id, :estate_id, :sales_order, :licence_type, :quantity, :expires_at, :status, :held_at, :now)

-- name: purchase_by_id
SELECT id, estate_id, sales_order, licence_type, quantity, expires_at, status, held_at, created_at
FROM purchases WHERE id = :purchase_id AND estate_id = :estate_id

-- name: purchases_of_estate
SELECT p.id, p.estate_id, p.sales_order, p.licence_type, p.quantity, p.expires_at, p.status,
       p.held_at, p.created_at
FROM purchases p WHERE p.estate_id = :estate_id
  AND (:after = '' OR (p.expires_at, p.id) >
       (SELECT expires_at, id FROM purchases WHERE id = :after AND estate_id = :estate_id))
ORDER BY p.expires_at, p.id
LIMIT :limit

-- name: purchase_update
UPDATE purchases SET status = :status, held_at = :held_at, expires_at = :expires_at
WHERE id = :purchase_id AND estate_id = :estate_id
