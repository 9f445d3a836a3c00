-- Usage history (broker/usage.py).

-- name: usage_estates_due
SELECT e.id FROM estates e
WHERE NOT EXISTS (SELECT 1 FROM usage_rounds r WHERE r.estate_id = e.id AND r.at = :at)
ORDER BY e.id

-- name: usage_round_claim
INSERT INTO usage_rounds (estate_id, at) VALUES (:estate_id, :at) ON CONFLICT (estate_id, at) DO NOTHING

-- name: usage_rounds_purge
DELETE FROM usage_rounds WHERE estate_id = :estate_id AND at < :before

-- name: usage_point_put
INSERT INTO usage_points (estate_id, series, resolution, at, allocated, in_use, available)
VALUES (:estate_id, :series, :resolution, :at, :allocated, :in_use, :available)
ON CONFLICT (estate_id, series, resolution, at) DO UPDATE SET
  allocated = MAX(usage_points.allocated, excluded.allocated),
  in_use = MAX(usage_points.in_use, excluded.in_use),
  available = MIN(usage_points.available, excluded.available)

-- name: usage_points_before
SELECT series, at, allocated, in_use, available FROM usage_points
WHERE estate_id = :estate_id AND resolution = :resolution AND at < :before

-- name: usage_points_drop
DELETE FROM usage_points WHERE estate_id = :estate_id AND resolution = :resolution AND at < :before

-- name: usage_points_of_series
SELECT at, allocated, in_use, available FROM usage_points
WHERE estate_id = :estate_id AND series = :series AND at >= :start AND at < :end
ORDER BY at

-- name: usage_points_of_types
SELECT series, at, allocated, in_use, available FROM usage_points
WHERE estate_id = :estate_id AND series >= 'type:' AND series < 'type;' AND at >= :start AND at < :end
ORDER BY series, at

-- name: usage_points_count
SELECT resolution, COUNT(*) AS n FROM usage_points
WHERE estate_id = :estate_id AND series = :series GROUP BY resolution ORDER BY resolution
