-- Console sessions (broker/console/sessions.py).

-- name: session_get
-- A session whose admin has been removed (or whose token was replaced) is no session.
SELECT s.token_hash, s.started_at, s.last_used_at
FROM console_sessions s JOIN admins a ON a.token_hash = s.token_hash AND a.removed_at IS NULL
WHERE s.id_hash = :id_hash

-- name: session_insert
INSERT INTO console_sessions (id_hash, token_hash, started_at, last_used_at)
VALUES (:id_hash, :token_hash, :now, :now)

-- name: session_touch
UPDATE console_sessions SET last_used_at = :now WHERE id_hash = :id_hash AND last_used_at < :now

-- name: session_delete
DELETE FROM console_sessions WHERE id_hash = :id_hash

-- name: sessions_prune
-- Sessions over, and those of admins removed or given a new token.
DELETE FROM console_sessions
WHERE last_used_at <= :idle_before OR started_at <= :started_before
   OR token_hash NOT IN (SELECT token_hash FROM admins WHERE removed_at IS NULL)

-- name: sessions_count
SELECT count(*) FROM console_sessions

-- name: sessions_count_of_token
SELECT count(*) FROM console_sessions WHERE token_hash = :token_hash

-- name: sessions_drop_oldest
DELETE FROM console_sessions
WHERE id_hash IN (SELECT id_hash FROM console_sessions ORDER BY started_at, id_hash LIMIT :count)

-- name: sessions_drop_oldest_of_token
DELETE FROM console_sessions
WHERE id_hash IN (
    SELECT id_hash FROM console_sessions WHERE token_hash = :token_hash ORDER BY started_at, id_hash LIMIT :count
)
