-- The operator's metrics (broker/api/metrics.py).

-- name: metrics_counts
SELECT
  (SELECT COUNT(*) FROM estates) AS estates,
  (SELECT COUNT(*) FROM pools WHERE deleted_at IS NULL) AS pools,
  (SELECT COUNT(*) FROM servers WHERE removed_at IS NULL) AS servers,
  (SELECT COUNT(*) FROM leases WHERE state = 'active' AND expires_at > :now) AS live_leases,
  (SELECT COALESCE(SUM(count), 0) FROM leases WHERE state = 'active' AND expires_at > :now) AS seats_in_use,
  (SELECT COUNT(*) FROM leases WHERE state = 'lapsed') AS leases_lapsed

-- name: estate_ids
SELECT id FROM estates ORDER BY id
