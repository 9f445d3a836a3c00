-- Webhooks: endpoints, events, the outbox and its attempts (broker/webhooks/).

-- name: webhook_insert
INSERT INTO webhook_endpoints (id, estate_id, url, events, created_at, secret_created, secret_sealed)
VALUES (:id, :estate_id, :url, :events, :now, :secret_created, :secret_sealed);

-- name: webhook_by_id
SELECT * FROM webhook_endpoints WHERE id = :endpoint_id AND estate_id = :estate_id;

-- name: webhooks_of_estate
SELECT * FROM webhook_endpoints
WHERE estate_id = :estate_id AND id > :after
ORDER BY id LIMIT :limit;

-- name: webhooks_subscribed
SELECT id, events FROM webhook_endpoints WHERE estate_id = :estate_id;

-- name: webhook_delete
DELETE FROM webhook_endpoints WHERE id = :endpoint_id AND estate_id = :estate_id;

-- name: webhook_outbox_delete_of_endpoint
DELETE FROM webhook_outbox WHERE endpoint_id = :endpoint_id;

-- name: webhook_attempts_delete_of_endpoint
DELETE FROM webhook_attempts WHERE endpoint_id = :endpoint_id;

-- name: webhook_rotate
UPDATE webhook_endpoints
SET old_created = secret_created, old_sealed = secret_sealed, old_until = :old_until,
    secret_created = :secret_created, secret_sealed = :secret_sealed
WHERE id = :endpoint_id AND estate_id = :estate_id;

-- name: webhook_succeeded
UPDATE webhook_endpoints SET failures = 0, last_success_at = :now WHERE id = :endpoint_id;

-- name: webhook_failed
UPDATE webhook_endpoints SET failures = failures + 1, last_failure_at = :now WHERE id = :endpoint_id;

-- name: webhook_event_insert
INSERT INTO webhook_events (id, estate_id, type, at, body) VALUES (:id, :estate_id, :type, :at, :body);

-- name: webhook_outbox_insert
INSERT INTO webhook_outbox (id, endpoint_id, event_id, state, attempts, next_at, created_at)
VALUES (:id, :endpoint_id, :event_id, 'pending', 0, :now, :now);

-- name: webhook_outbox_due
SELECT o.id FROM webhook_outbox o
WHERE o.state = 'pending' AND o.next_at <= :now AND (o.claimed_until IS NULL OR o.claimed_until <= :now)
ORDER BY o.next_at, o.id LIMIT :limit;

-- name: webhook_outbox_claim
UPDATE webhook_outbox SET claim = :claim, claimed_until = :until
WHERE id = :outbox_id AND state = 'pending' AND (claimed_until IS NULL OR claimed_until <= :now);

-- name: webhook_outbox_claimed
SELECT o.id, o.attempts, o.endpoint_id, o.event_id, e.type AS event_type, e.body, w.url, w.estate_id,
       w.secret_created, w.secret_sealed, w.old_created, w.old_sealed, w.old_until
FROM webhook_outbox o
JOIN webhook_events e ON e.id = o.event_id
JOIN webhook_endpoints w ON w.id = o.endpoint_id
WHERE o.claim = :claim;

-- name: webhook_outbox_of_claim
SELECT id, attempts, endpoint_id FROM webhook_outbox WHERE id = :outbox_id AND claim = :claim AND state = 'pending';

-- name: webhook_outbox_done
UPDATE webhook_outbox SET state = :state, attempts = attempts + 1, claim = NULL, claimed_until = NULL
WHERE id = :outbox_id;

-- name: webhook_outbox_retry
UPDATE webhook_outbox SET attempts = attempts + 1, next_at = :next_at, claim = NULL, claimed_until = NULL
WHERE id = :outbox_id;

-- name: webhook_attempt_insert
INSERT INTO webhook_attempts
    (endpoint_id, outbox_id, event_id, event_type, attempt, at, status_code, latency_ms, error, outcome)
VALUES (:endpoint_id, :outbox_id, :event_id, :event_type, :attempt, :at, :status_code, :latency_ms, :error, :outcome);

-- name: webhook_attempts_of_endpoint
SELECT * FROM webhook_attempts
WHERE endpoint_id = :endpoint_id AND (:before = 0 OR id < :before)
ORDER BY id DESC LIMIT :limit;

-- name: webhook_outbox_counts
SELECT state, COUNT(*) AS n FROM webhook_outbox WHERE endpoint_id = :endpoint_id GROUP BY state;

-- name: webhook_mark
INSERT INTO webhook_marks (key, until) VALUES (:key, :until)
ON CONFLICT (key) DO UPDATE SET until = :until
WHERE webhook_marks.until IS NOT NULL AND webhook_marks.until <= :now;

-- name: webhook_marked
SELECT key FROM webhook_marks WHERE key IN (:k1, :k2, :k3);

-- name: purchases_near_expiry
-- Purchases with an expiry stage due whose mark is missing (a later stage marks the earlier).
SELECT p.id, p.estate_id, p.sales_order, p.licence_type, p.quantity, p.expires_at, p.status
FROM purchases p
WHERE p.expires_at <= :now + :window
  AND NOT EXISTS (SELECT 1 FROM webhook_marks m
                  WHERE m.key = (CASE WHEN p.expires_at + :grace <= :now THEN 'purchase.grace_ended:'
                                      WHEN p.expires_at <= :now THEN 'purchase.expired:'
                                      ELSE 'purchase.expiring:' END) || p.id || ':' || p.expires_at)
ORDER BY p.expires_at, p.id LIMIT :limit;

-- name: webhook_pool_name
SELECT name FROM pools WHERE id = :pool_id;

-- name: webhook_outbox_release
UPDATE webhook_outbox SET claim = NULL, claimed_until = NULL WHERE claim = :claim AND state = 'pending';

-- name: webhook_attempts_purge
DELETE FROM webhook_attempts WHERE id IN (SELECT id FROM webhook_attempts WHERE at < :before ORDER BY id LIMIT :limit);

-- name: webhook_outbox_purge
DELETE FROM webhook_outbox WHERE id IN (
    SELECT id FROM webhook_outbox WHERE state <> 'pending' AND created_at < :before LIMIT :limit);

-- name: webhook_events_purge
DELETE FROM webhook_events WHERE id IN (
    SELECT e.id FROM webhook_events e
    WHERE e.at < :before AND NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id)
    LIMIT :limit);

-- name: webhook_marks_purge
DELETE FROM webhook_marks WHERE until IS NOT NULL AND until < :now;

-- name: webhook_metrics
SELECT
  (SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending') AS pending,
  (SELECT COUNT(*) FROM webhook_outbox WHERE state = 'failed') AS failed,
  (SELECT COUNT(*) FROM webhook_endpoints WHERE failures >= :failing_after) AS failing;

-- name: webhook_outbox_any_due
SELECT 1 FROM webhook_outbox
WHERE state = 'pending' AND next_at <= :now AND (claimed_until IS NULL OR claimed_until <= :now)
LIMIT 1;
