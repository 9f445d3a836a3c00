-- Code-redemption budgets (broker/ratelimit.py): attempts in flight and failures within
-- the window, per address, per network and for everyone.

-- name: redemption_prune
DELETE FROM redemption_attempts WHERE at <= :since

-- name: redemption_address_count
SELECT count(*) AS attempts, min(CASE WHEN failed = 1 THEN at END) AS oldest_failure
FROM redemption_attempts WHERE address = :address AND at > :since

-- name: redemption_network_count
SELECT count(*) AS attempts, min(CASE WHEN failed = 1 THEN at END) AS oldest_failure
FROM redemption_attempts WHERE network = :network AND at > :since

-- name: redemption_count
SELECT count(*) FROM redemption_attempts WHERE at > :since

-- name: redemption_begin
INSERT INTO redemption_attempts (address, network, at, failed) VALUES (:address, :network, :now, 0)

-- name: redemption_fail
UPDATE redemption_attempts SET failed = 1, at = :now
WHERE id = (SELECT id FROM redemption_attempts WHERE address = :address AND failed = 0 ORDER BY at, id LIMIT 1)

-- name: redemption_fail_late
INSERT INTO redemption_attempts (address, network, at, failed) VALUES (:address, :network, :now, 1)

-- name: redemption_succeed
DELETE FROM redemption_attempts
WHERE id = (SELECT id FROM redemption_attempts WHERE address = :address AND failed = 0 ORDER BY at, id LIMIT 1)
