-- Servers and domains (broker/servers.py; enrolment in broker/codes.py, token look-up in
-- broker/principals.py, the binding and last-seen of a lease request in broker/leases.py).

-- name: server_insert
INSERT INTO servers (id, estate_id, pool_id, name, kind, token_hash, created_at, last_seen_at)
VALUES (:id, :estate_id, :pool_id, :name, :kind, :token_hash, :now, :now)

-- name: server_by_token
SELECT s.id AS server_id, s.estate_id, s.pool_id, s.name, s.kind
FROM servers s WHERE s.token_hash = :token_hash AND s.removed_at IS NULL

-- name: server_by_id
SELECT id, estate_id, pool_id, name, kind, created_at, last_seen_at FROM servers
WHERE id = :server_id AND estate_id = :estate_id AND removed_at IS NULL

-- name: servers_of_estate
SELECT s.id, s.name, s.kind, s.pool_id, s.created_at, s.last_seen_at,
       COALESCE((SELECT SUM(l.count) FROM leases l
                 WHERE l.server_id = s.id AND l.state = 'active' AND l.expires_at > :now), 0) AS in_use,
       (SELECT COUNT(*) FROM leases l
        WHERE l.server_id = s.id AND l.state = 'active' AND l.expires_at > :now) AS leases
FROM servers s
WHERE s.estate_id = :estate_id AND s.removed_at IS NULL AND (CAST(:pool_id AS TEXT) IS NULL OR s.pool_id = :pool_id)
  AND (:after = '' OR (s.name, s.id) > (SELECT name, id FROM servers WHERE id = :after AND estate_id = :estate_id))
ORDER BY s.name, s.id
LIMIT :limit

-- name: server_view
SELECT s.id, s.name, s.kind, s.pool_id, s.created_at, s.last_seen_at,
       COALESCE((SELECT SUM(l.count) FROM leases l
                 WHERE l.server_id = s.id AND l.state = 'active' AND l.expires_at > :now), 0) AS in_use,
       (SELECT COUNT(*) FROM leases l
        WHERE l.server_id = s.id AND l.state = 'active' AND l.expires_at > :now) AS leases
FROM servers s
WHERE s.id = :server_id AND s.estate_id = :estate_id AND s.removed_at IS NULL

-- name: server_remove
UPDATE servers SET removed_at = :now WHERE id = :server_id AND removed_at IS NULL

-- name: server_rebind
UPDATE servers SET pool_id = :pool_id WHERE id = :server_id

-- name: server_seen
UPDATE servers SET last_seen_at = :now WHERE id = :server_id AND (last_seen_at IS NULL OR last_seen_at < :now)
