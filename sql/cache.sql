-- The shared-memory cache: API, conversions, errors, TTL (with the test clock), get_or_load,
-- invalidation on commit.  Counters are shared by the server, so only their deltas are checked.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_courier;
RESET client_min_messages;
CREATE TEMP TABLE s0 AS SELECT * FROM courier.cache_stats;
SELECT courier.cache_clear() >= 0 AS cleared;

-- set / get of each type, overwrite, miss
SELECT courier.cache_set('t:1', 'hello');
SELECT courier.cache_set('j:1', '{"b": [1, 2], "a": null}'::jsonb, '1 hour');
SELECT courier.cache_set('b:1', '\xdeadbeef'::bytea);
SELECT courier.cache_get('t:1') AS text, courier.cache_get('j:1') AS jsonb_as_text,
       courier.cache_get('b:1') AS bytea_as_text, courier.cache_get('nope') IS NULL AS miss;
SELECT courier.cache_get_jsonb('j:1') -> 'b' AS jsonb, courier.cache_get_bytea('b:1') AS bytea,
       courier.cache_get_bytea('t:1') AS text_as_bytea;
SELECT courier.cache_set('t:1', 'world');
SELECT courier.cache_get('t:1');
SELECT courier.cache_set('n:1', '42');
SELECT courier.cache_get_jsonb('n:1') AS text_parsed_as_jsonb;
SELECT courier.cache_set('empty', '');
SELECT courier.cache_get('empty') = '' AS empty_value_kept;
-- values spanning many chunks come back intact
SELECT courier.cache_set('long', repeat('0123456789', 10000));
SELECT courier.cache_get('long') = repeat('0123456789', 10000) AS long_value_intact;
SELECT courier.cache_set(repeat('k', 1024), 'longest key');
SELECT courier.cache_get(repeat('k', 1024));
SELECT courier.cache_get(NULL) IS NULL AS null_key_is_null;

-- errors
SELECT courier.cache_set(NULL, 'x');
SELECT courier.cache_set('x', NULL::text);
SELECT courier.cache_set(repeat('k', 1025), 'x');
SELECT courier.cache_set('x', repeat('x', 1048577));
SELECT courier.cache_set('x', 'x', '-1 second');
SELECT courier.cache_set('x', 'x', '0');
SELECT courier.cache_get_jsonb('b:1');
SELECT courier.cache_get_jsonb('t:1');
SELECT courier.cache_set('bad json', 'not json');
SELECT courier.cache_get_jsonb('bad json');
SELECT courier.cache_delete_prefix('');

-- delete, delete_prefix, clear
SELECT courier.cache_delete('t:1') AS deleted, courier.cache_delete('t:1') AS again,
       courier.cache_get('t:1') IS NULL AS gone;
SELECT count(courier.cache_set('ns:' || i, i::text)) FROM generate_series(1, 5) i;
SELECT courier.cache_set('nsx', 'kept');
SELECT courier.cache_delete_prefix('ns:') AS deleted_prefix, courier.cache_get('nsx') AS kept,
       courier.cache_get('ns:3') IS NULL AS gone;

-- TTL: the test clock moves the cache's time forward for every session
SELECT courier.cache_set('ttl:short', 'a', '10 seconds');
SELECT courier.cache_set('ttl:long', 'b', '1 hour');
SELECT courier.cache_set('ttl:none', 'c');
SELECT courier.cache_set('ttl:touched', 'd', '10 seconds');
SELECT courier.cache_touch('ttl:touched', '1 hour') AS touched, courier.cache_touch('ttl:missing') AS touched_missing;
SELECT courier._cache_test_clock_advance('11 seconds');
SELECT courier.cache_get('ttl:short') IS NULL AS short_expired, courier.cache_get('ttl:long') AS long_lives,
       courier.cache_get('ttl:none') AS no_ttl_lives, courier.cache_get('ttl:touched') AS touched_lives;
SELECT courier.cache_touch('ttl:short', '1 hour') AS expired_cannot_be_touched;
-- courier.cache_default_ttl applies when ttl is NULL
SET courier.cache_default_ttl = '5s';
SELECT courier.cache_set('ttl:default', 'default ttl');
SELECT courier.cache_set('ttl:explicit', 'explicit ttl', '1 hour');
RESET courier.cache_default_ttl;
SELECT courier._cache_test_clock_advance('6 seconds');
SELECT courier.cache_purge_expired() AS purged;
SELECT courier.cache_get('ttl:default') IS NULL AS default_expired, courier.cache_get('ttl:explicit') AS explicit_lives;
-- jitter spreads expiries within +/- the fraction
SET courier.cache_ttl_jitter = 0.5;
SELECT count(courier.cache_set('jit:' || i, 'x', '100 seconds')) FROM generate_series(1, 50) i;
RESET courier.cache_ttl_jitter;
SELECT courier._cache_test_clock_advance('49 seconds');
SELECT count(courier.cache_get('jit:' || i)) AS alive_before_min FROM generate_series(1, 50) i;
SELECT courier._cache_test_clock_advance('102 seconds');
SELECT count(courier.cache_get('jit:' || i)) AS alive_after_max FROM generate_series(1, 50) i;
SET courier.cache_ttl_jitter = 1.5;
SELECT courier._cache_test_clock_advance('-1 second');

-- get_or_load: a query with the key as $1, or a function name f(text)
CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, customer int);
INSERT INTO orders VALUES (1, 'new', 10), (2, 'new', 10), (3, 'paid', 20);
CREATE FUNCTION order_status(key text) RETURNS text LANGUAGE sql
AS $$ SELECT status FROM orders WHERE id = split_part(key, ':', 2)::int $$;
SELECT courier.cache_get_or_load('order:1', 'SELECT status FROM orders WHERE id = split_part($1, '':'', 2)::int', '1 hour');
UPDATE orders SET status = 'changed behind the cache''s back' WHERE id = 1;
SELECT courier.cache_get_or_load('order:1', 'SELECT status FROM orders WHERE id = split_part($1, '':'', 2)::int') AS cached;
SELECT courier.cache_get_or_load('order:2', 'order_status') AS by_function_name;
SELECT courier.cache_get_or_load('order:2', 'public.order_status') AS qualified_name_cached;
SELECT courier.cache_get_or_load_jsonb('orderj:3', 'SELECT to_jsonb(o) FROM orders o WHERE id = 3');
SELECT courier.cache_get_jsonb('orderj:3') ->> 'status' AS stored_as_jsonb;
SELECT courier.cache_get_or_load('num', 'SELECT 6 * 7');
-- no row or NULL: NULL, nothing cached
SELECT courier.cache_get_or_load('order:99', 'order_status') IS NULL AS no_row;
SELECT courier.cache_get('order:99') IS NULL AS not_cached;
-- loader errors reach the caller and nothing is cached
SELECT courier.cache_get_or_load('err:1', 'SELECT 1/0');
SELECT courier.cache_get('err:1') IS NULL AS not_cached;
SELECT courier.cache_get_or_load('err:2', 'SELECT id FROM orders');
SELECT courier.cache_get_or_load('err:3', 'SELECT 1, 2');
SELECT courier.cache_get_or_load('err:4', 'no_such_function');
SELECT courier.cache_get_or_load('err:5', 'CREATE TEMP TABLE x (a int)');
SELECT courier.cache_get_or_load('err:6', 'SELECT repeat(''x'', 1048577)');
SELECT courier.cache_get_or_load('err:7', NULL);
SELECT courier.cache_get_or_load('err:8', 'SELECT 1', '-1 hour');
SELECT courier.cache_get_or_load('rec', 'SELECT courier.cache_get_or_load($1, ''SELECT 1'')');
-- after a failure the next caller loads again
SELECT courier.cache_get_or_load('err:1', 'SELECT ''recovered''');

-- invalidation on commit
SELECT courier.cache_invalidate_on('orders', 'order:{id}');
SELECT courier.cache_invalidate_on('orders', 'customer:{customer}:orders');
SELECT courier.cache_invalidate_on('orders', 'order:{id}') AS idempotent;
SELECT "table", key_template FROM courier.cache_invalidations ORDER BY key_template;
SELECT courier.cache_set('order:1', 'cached 1'), courier.cache_set('order:2', 'cached 2'),
       courier.cache_set('customer:10:orders', '[1, 2]'), courier.cache_set('customer:20:orders', '[3]');
-- rollback evicts nothing; the transaction itself still reads the cache
BEGIN;
UPDATE orders SET status = 'paid' WHERE id = 1;
SELECT courier.cache_get('order:1') AS inside_transaction;
ROLLBACK;
SELECT courier.cache_get('order:1') AS after_rollback;
-- commit deletes the keys of the old and the new row
BEGIN;
UPDATE orders SET status = 'paid', customer = 20 WHERE id = 1;
SELECT courier.cache_get('order:1') AS before_commit;
COMMIT;
SELECT courier.cache_get('order:1') IS NULL AS order_1_gone, courier.cache_get('order:2') AS order_2_kept,
       courier.cache_get('customer:10:orders') IS NULL AS old_customer_gone,
       courier.cache_get('customer:20:orders') IS NULL AS new_customer_gone;
-- a rolled-back savepoint forgets its keys; a released one keeps them
SELECT courier.cache_set('order:1', 'v1'), courier.cache_set('order:2', 'v2'), courier.cache_set('order:3', 'v3');
BEGIN;
SAVEPOINT a;
UPDATE orders SET status = 'x' WHERE id = 1;
ROLLBACK TO a;
SAVEPOINT b;
UPDATE orders SET status = 'x' WHERE id = 2;
RELEASE b;
DELETE FROM orders WHERE id = 3;
COMMIT;
SELECT courier.cache_get('order:1') AS savepoint_rolled_back, courier.cache_get('order:2') IS NULL AS released_gone,
       courier.cache_get('order:3') IS NULL AS deleted_gone;
-- INSERT, NULL key columns (no key), TRUNCATE (the template's literal prefix)
SELECT courier.cache_set('order:4', 'stale'), courier.cache_set('customer::orders', 'not touched');
INSERT INTO orders VALUES (4, 'new', NULL);
SELECT courier.cache_get('order:4') IS NULL AS inserted_gone, courier.cache_get('customer::orders') AS null_column_no_key;
SELECT courier.cache_set('order:1', 'v'), courier.cache_set('customer:10:orders', 'v'), courier.cache_set('other', 'v');
TRUNCATE orders;
SELECT courier.cache_get('order:1') IS NULL AS truncated_gone, courier.cache_get('customer:10:orders') IS NULL AS truncated_gone_2,
       courier.cache_get('other') AS other_kept;
-- two-phase commit cannot carry invalidations
BEGIN;
INSERT INTO orders VALUES (5, 'new', 1);
PREPARE TRANSACTION 'cache_2pc';
-- a loader in a transaction that has pending invalidations does not store its (uncommitted) read
BEGIN;
INSERT INTO orders VALUES (6, 'uncommitted', 1);
SELECT courier.cache_get_or_load('order:6', 'order_status') AS read_own_write;
SELECT courier.cache_get('order:6') IS NULL AS not_stored;
ROLLBACK;
SELECT courier.cache_get('order:6') IS NULL AS still_not_cached;
-- template and table errors
SELECT courier.cache_invalidate_on('orders', 'order:{nope}');
SELECT courier.cache_invalidate_on('orders', 'order:{id');
SELECT courier.cache_invalidate_on('orders', NULL);
CREATE VIEW orders_v AS SELECT * FROM orders;
SELECT courier.cache_invalidate_on('orders_v', 'order:{id}');
SELECT courier.cache_invalidate_on('no_such_table', 'order:{id}');
-- removing invalidation
SELECT courier.cache_invalidate_off('orders', 'customer:{customer}:orders') AS removed;
SELECT key_template FROM courier.cache_invalidations;
SELECT courier.cache_invalidate_off('orders') AS removed_all;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 'orders'::regclass;

-- statistics moved as expected (deltas: the counters are server-wide)
SELECT c.hits > s0.hits AS hits, c.misses > s0.misses AS misses, c.sets > s0.sets AS sets,
       c.expirations - s0.expirations >= 3 AS expirations, c.loads > s0.loads AS loads,
       c.load_failures - s0.load_failures >= 3 AS load_failures, c.deletes > s0.deletes AS deletes,
       c.hit_ratio BETWEEN 0 AND 1 AS ratio, c.used_bytes <= c.capacity_bytes AS within_capacity,
       c.capacity_bytes <= c.shmem_bytes AS within_shmem, c.shmem_bytes <= 64 * 1024 * 1024 AS within_cache_size
  FROM courier.cache_stats c, s0;
SELECT count(*) = (SELECT partitions FROM courier.cache_stats) AS one_row_per_partition,
       sum(capacity_entries) = (SELECT capacity_entries FROM courier.cache_stats) AS sums_match
  FROM courier.cache_partition_stats;

-- privileges: administrators only for clearing everything and resetting
CREATE ROLE cache_regress_user;
SET ROLE cache_regress_user;
SELECT courier.cache_set('role:1', 'ok');
SELECT courier.cache_get('role:1');
SELECT courier.cache_clear();
SELECT courier.cache_stats_reset();
SELECT courier._cache_test_clock_advance('1 s');
RESET ROLE;
DROP ROLE cache_regress_user;

DROP VIEW orders_v;
DROP TABLE orders;
DROP FUNCTION order_status(text);
SELECT courier.cache_clear() >= 0 AS cleared;
