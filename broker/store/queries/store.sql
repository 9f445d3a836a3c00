-- The store's own (broker/store/): its health check.

-- name: ping
SELECT 1
