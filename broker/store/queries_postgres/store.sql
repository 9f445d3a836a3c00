-- The store's own (broker/store/): its readiness probe.

-- name: health_probe
UPDATE health SET probed_at = :now WHERE id = 1
