-- Authentication codes (broker/codes.py).

-- name: code_live_by_mac
SELECT id, estate_id, pool_id, expires_at FROM auth_codes
WHERE code_mac = :code_mac AND state = 'live' AND expires_at > :now

-- name: code_insert
INSERT INTO auth_codes (id, estate_id, pool_id, code_mac, state, created_at, expires_at, created_by)
VALUES (:id, :estate_id, :pool_id, :code_mac, 'live', :now, :expires_at, :created_by)

-- name: codes_live_of_estate
SELECT c.id, c.pool_id, c.created_at, c.expires_at, c.created_by, p.name AS pool_name
FROM auth_codes c JOIN pools p ON p.id = c.pool_id
WHERE c.estate_id = :estate_id AND c.state = 'live' AND c.expires_at > :now
  AND (CAST(:pool_id AS TEXT) IS NULL OR c.pool_id = :pool_id)
  AND (:after = '' OR (c.created_at, c.seq) >
       (SELECT created_at, seq FROM auth_codes WHERE id = :after AND estate_id = :estate_id))
ORDER BY c.created_at, c.seq
LIMIT :limit

-- name: code_by_id
SELECT id, pool_id, state, expires_at FROM auth_codes WHERE id = :code_id AND estate_id = :estate_id

-- name: code_revoke
UPDATE auth_codes SET state = 'revoked' WHERE id = :code_id AND state = 'live'

-- name: code_use
UPDATE auth_codes SET state = 'used', used_at = :now, server_id = :server_id
WHERE id = :code_id AND state = 'live' AND expires_at > :now

-- name: codes_live_of_creator
SELECT id, pool_id FROM auth_codes
WHERE estate_id = :estate_id AND created_by = :created_by AND state = 'live' AND expires_at > :now
ORDER BY created_at, seq

-- name: codes_revoke_of_pool
UPDATE auth_codes SET state = 'revoked' WHERE pool_id = :pool_id AND state = 'live'

-- name: pool_has_grantable
SELECT 1 FROM holdings h JOIN purchases p ON p.id = h.purchase_id
WHERE h.pool_id = :pool_id AND h.allocated > 0 AND p.status = 'valid' AND p.expires_at > :now
LIMIT 1

-- name: estate_pool_names
SELECT e.name AS estate_name, p.name AS pool_name FROM pools p JOIN estates e ON e.id = p.estate_id
WHERE p.id = :pool_id
