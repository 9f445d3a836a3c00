-- Idempotency-Key records (broker/idempotency.py).

-- name: idempotency_get
SELECT request_hash, status, nonce, body, created_at FROM idempotency WHERE key_hash = :key_hash

-- name: idempotency_put
INSERT INTO idempotency (key_hash, request_hash, status, nonce, body, created_at)
VALUES (:key_hash, :request_hash, :status, :nonce, :body, :now)

-- name: idempotency_delete
DELETE FROM idempotency WHERE key_hash = :key_hash

-- name: idempotency_purge
DELETE FROM idempotency WHERE created_at < :before
