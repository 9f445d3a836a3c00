-- Estates and their admins (broker/estates.py; token look-up in broker/principals.py).

-- name: estate_insert
INSERT INTO estates (id, name, created_at) VALUES (:id, :name, :now)

-- name: estates_count
SELECT COUNT(*) FROM estates

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
