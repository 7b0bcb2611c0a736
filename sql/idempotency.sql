-- Idempotency keys and consumer deduplication: every outcome and every error.
-- Expiry is simulated by moving a row's timestamps into the past (no sleeping).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_courier;
TRUNCATE courier.idempotency_keys, courier.consumed_events;
RESET client_min_messages;

-- A view of begin()'s row without the volatile values.
CREATE FUNCTION idem(k text, fp text DEFAULT NULL, sc text DEFAULT '', ttl interval DEFAULT '24 hours',
                     lease interval DEFAULT '30 seconds')
RETURNS TABLE (outcome text, status_code int, response jsonb, has_token boolean, has_lease boolean, attempt int)
LANGUAGE sql AS $$
    SELECT b.outcome, b.status_code, b.response, b.lease_token IS NOT NULL, b.lease_expires_at IS NOT NULL, b.attempt
      FROM courier.idempotency_begin(k, fp, sc, ttl, lease) b
$$;

-- 1. The single-transaction shape: begin, work, complete commit together.
BEGIN;
SELECT * FROM idem('order-1', 'fp-a');
-- the same key again inside the owning transaction: it is held (by us)
SELECT * FROM idem('order-1', 'fp-a');
SELECT courier.idempotency_complete('order-1', 201, '{"order": 1, "total": 9.90}');
COMMIT;
-- a retry is answered from the stored outcome, byte for byte
SELECT * FROM idem('order-1', 'fp-a');
SELECT response::text = '{"order": 1, "total": 9.90}'::jsonb::text AS identical
  FROM courier.idempotency_begin('order-1', 'fp-a');
-- same key, different request: 422
SELECT * FROM idem('order-1', 'fp-b');
SELECT * FROM idem('order-1');
-- scopes are separate namespaces
SELECT * FROM idem('order-1', 'fp-b', 'tenant-2');

-- 2. A rolled-back transaction leaves the key free.
BEGIN;
SELECT outcome FROM courier.idempotency_begin('order-2');
ROLLBACK;
SELECT outcome FROM courier.idempotency_begin('order-2');

-- ... also under REPEATABLE READ: a transaction sees its own claim and answer.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT outcome FROM courier.idempotency_begin('order-rr');
SELECT outcome FROM courier.idempotency_begin('order-rr');
SELECT courier.idempotency_complete('order-rr', 200, '{"rr": true}');
SELECT outcome, response FROM courier.idempotency_begin('order-rr');
COMMIT;
SELECT outcome, response FROM courier.idempotency_begin('order-rr');

-- 3. The multi-transaction shape: begin commits a lease; others see in_progress until it ends.
SELECT * FROM idem('order-3', 'fp');
SELECT * FROM idem('order-3', 'fp');
SELECT lease_expires_at = (SELECT k.lease_expires_at FROM courier.idempotency_keys k WHERE key = 'order-3')
       AS retry_after_is_lease_end
  FROM courier.idempotency_begin('order-3', 'fp');
SELECT * FROM idem('order-3', 'other');   -- a different request is a mismatch even while in progress
-- the holder's lease expires (it crashed): the next request recovers the key
SELECT lease_token AS old_token FROM courier.idempotency_keys WHERE key = 'order-3' \gset
UPDATE courier.idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'order-3';
SELECT * FROM idem('order-3', 'fp');
-- the old holder comes back: it no longer owns the key
SELECT courier.idempotency_complete('order-3', 200, '{}', '', :'old_token');
SELECT courier.idempotency_abandon('order-3', '', :'old_token');
SELECT courier.idempotency_extend('order-3', '1 minute', '', :'old_token');
-- the new holder extends its lease and completes with its token
SELECT lease_token AS new_token FROM courier.idempotency_keys WHERE key = 'order-3' \gset
SELECT courier.idempotency_extend('order-3', '1 minute', '', :'new_token') > clock_timestamp() AS extended;
SELECT courier.idempotency_complete('order-3', 200, '{"ok": true}', '', :'new_token');
SELECT * FROM idem('order-3', 'fp');

-- 4. Errors that are answers are stored; transient failures release the key.
SELECT outcome FROM courier.idempotency_begin('pay-1');
SELECT courier.idempotency_complete('pay-1', 402, '{"error": "card_declined"}');
SELECT * FROM idem('pay-1');
SELECT outcome FROM courier.idempotency_begin('pay-2');
SELECT courier.idempotency_complete('pay-2', 503, '{"error": "upstream down"}');
SELECT * FROM idem('pay-2');
SELECT courier.idempotency_complete('pay-2', 429);
SELECT * FROM idem('pay-2');
SELECT courier.idempotency_complete('pay-2', 204);   -- no body: NULL is stored and replayed
SELECT * FROM idem('pay-2');
-- abandon: the retry starts again
SELECT outcome FROM courier.idempotency_begin('pay-3');
SELECT courier.idempotency_abandon('pay-3');
SELECT courier.idempotency_abandon('pay-3');          -- nothing held any more
SELECT * FROM idem('pay-3');

-- 5. An expired key behaves as new (fingerprint, attempt and outcome are forgotten).
UPDATE courier.idempotency_keys SET expires_at = now() - interval '1 second', created_at = now() - interval '2 days'
 WHERE key = 'order-1' AND scope = '';
SELECT * FROM idem('order-1', 'fp-new');
SELECT fingerprint, state, status_code, response FROM courier.idempotency_keys WHERE key = 'order-1' AND scope = '';
-- the ttl given to begin sets the expiry
SELECT expires_at - created_at AS ttl FROM courier.idempotency_keys WHERE key = 'order-1' AND scope = '';
SELECT outcome FROM courier.idempotency_begin('short', ttl => '5 minutes', lease => '5 minutes');
SELECT expires_at - created_at AS ttl, lease_expires_at - created_at AS lease
  FROM courier.idempotency_keys WHERE key = 'short';

-- 6. Bad input: clear errors, nothing written.
SELECT * FROM courier.idempotency_begin(NULL);
SELECT * FROM courier.idempotency_begin('');
SELECT * FROM courier.idempotency_begin(repeat('x', 256));
SELECT outcome FROM courier.idempotency_begin(repeat('é', 255));   -- 255 characters are fine
SELECT * FROM courier.idempotency_begin('k', scope => NULL);
SELECT * FROM courier.idempotency_begin('k', ttl => NULL);
SELECT * FROM courier.idempotency_begin('k', ttl => '0');
SELECT * FROM courier.idempotency_begin('k', lease => '-1 second');
SELECT * FROM courier.idempotency_begin('k', ttl => '1 minute', lease => '2 minutes');
SELECT courier.idempotency_complete('never-begun', 200, '{}');
SELECT courier.idempotency_complete('pay-1', 200, '{}');
SELECT courier.idempotency_complete('order-3', NULL, '{}');
SELECT courier.idempotency_complete('order-3', 102, '{}');
SELECT courier.idempotency_complete('order-3', 600, '{}');
SELECT courier.idempotency_complete(NULL, 200, '{}');
SELECT courier.idempotency_abandon('pay-1');
SELECT courier.idempotency_extend('pay-1');
SELECT courier.idempotency_extend('never-begun');
SELECT courier.idempotency_extend('order-1', lease => '0');
SELECT count(*) AS keys_named_k FROM courier.idempotency_keys WHERE key = 'k';

-- 7. Request fingerprints: SHA-256, independent of key order, whitespace and number spelling.
SELECT courier.request_fingerprint('POST', '/orders', '{"b": 1.0, "a": [1, {"y": null, "x": "é\n"}]}')
     = courier.request_fingerprint('post', '/orders', '{"a":[1,{"x":"é\n","y":null}],"b":1}') AS same;
SELECT courier.request_fingerprint('POST', '/orders', '{"a": 1}')
     = courier.request_fingerprint('POST', '/orders', '{"a": 2}') AS same_body_changed,
       courier.request_fingerprint('POST', '/orders', '{"a": 1}')
     = courier.request_fingerprint('PUT', '/orders', '{"a": 1}') AS same_method_changed,
       courier.request_fingerprint('POST', '/orders', NULL)
     = courier.request_fingerprint('POST', '/orders', 'null') AS absent_is_null,
       courier.request_fingerprint('POST', '/a', NULL)
     = courier.request_fingerprint('POST/', 'a', NULL) AS split_moved;
-- the documented format, checked against the built-in sha256()
SELECT courier.request_fingerprint('post', '/orders', '{"total": 10.50, "id": 7}')
     = encode(sha256(convert_to('4:POST,7:/orders,{"id":7,"total":10.5}', 'UTF8')), 'hex') AS documented;
SELECT courier.request_fingerprint('GET', '/x', NULL);
SELECT courier.request_fingerprint(NULL, '/x', NULL);
SELECT courier.request_fingerprint('', '/x', NULL);

-- 8. Consumer-side deduplication follows the caller's transaction.
SELECT courier.consume_once('billing', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT courier.consume_once('billing', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT courier.consume_once('shipping', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
BEGIN;
SELECT courier.consume_once('billing', 'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
ROLLBACK;
SELECT courier.consume_once('billing', 'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT courier.consume_once(NULL, 'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT courier.consume_once('', 'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT courier.consume_once('billing', NULL);

-- 9. Sweeping: expired keys and dedupe records past courier.dedupe_retention go; the rest stays.
-- (in one transaction, so that the worker's own sweep cannot take these rows first)
BEGIN;
SELECT count(*) AS keys_before FROM courier.idempotency_keys;
UPDATE courier.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key LIKE 'pay-%';
UPDATE courier.consumed_events SET consumed_at = now() - interval '8 days' WHERE consumer = 'shipping';
SHOW courier.dedupe_retention;
SELECT * FROM courier.idempotency_sweep();
SELECT * FROM courier.idempotency_sweep();
COMMIT;
SELECT count(*) AS keys_after FROM courier.idempotency_keys;
SELECT consumer, count(*) FROM courier.consumed_events GROUP BY 1 ORDER BY 1;
SELECT courier.consume_once('shipping', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11') AS processed_again;

-- 10. Ordinary roles use the functions, not the keys table; they see (and may delete) only their own
-- consume_once markers (key spaces: doc/security.md#tenancy).
CREATE ROLE idem_app;
SET ROLE idem_app;
SELECT outcome FROM courier.idempotency_begin('role-key', scope => 'app');
SELECT courier.idempotency_complete('role-key', 200, '{"ok": 1}', 'app');
SELECT outcome, response FROM courier.idempotency_begin('role-key', scope => 'app');
SELECT courier.consume_once('app', 'c2eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT count(*) FROM courier.idempotency_keys;
SELECT consumer, owner FROM courier.consumed_events;
DELETE FROM courier.consumed_events WHERE consumer = 'shipping';
RESET ROLE;
SELECT count(*) AS shipping_markers_kept FROM courier.consumed_events WHERE consumer = 'shipping';
RESET ROLE;
DROP ROLE idem_app;

-- 11. The functions run as their owner, so nothing in the caller's search_path may be picked up.
CREATE FUNCTION public.evil_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'evil operator called by %', current_user; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq);
CREATE FUNCTION public.evil_plus(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'evil operator called by %', current_user; END $$;
CREATE OPERATOR public.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.evil_plus);
SET search_path = public, pg_catalog;
SELECT 'a'::text = 'a'::text;   -- the caller's own statements do see it
SELECT outcome FROM courier.idempotency_begin('path-1', 'fp');
SELECT outcome FROM courier.idempotency_begin('path-1', 'fp');
SELECT courier.idempotency_extend('path-1') IS NOT NULL AS extended;
SELECT courier.idempotency_complete('path-1', 200, '{}');
SELECT outcome FROM courier.idempotency_begin('path-1', 'fp');
SELECT keys_removed >= 0 AS swept FROM courier.idempotency_sweep();
SELECT courier.consume_once('path', 'd3eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
RESET search_path;
DROP OPERATOR public.= (text, text);
DROP OPERATOR public.+ (timestamptz, interval);
DROP FUNCTION public.evil_eq, public.evil_plus;

-- 12. The settings.
SELECT name, setting, unit, context FROM pg_settings
 WHERE name IN ('courier.idempotency_sweep_ms', 'courier.idempotency_sweep_batch', 'courier.dedupe_retention')
 ORDER BY name;

DROP FUNCTION idem;
TRUNCATE courier.idempotency_keys, courier.consumed_events;
