-- Shard routing: published vectors, agreement with the Citus formula, rings, maps, errors.
\set VERBOSITY terse
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_courier;
RESET client_min_messages;
-- err(sql): the SQLSTATE and message of the error a statement raises
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- Redis Cluster slots (CRC16/XMODEM mod 16384, hash tags)
SELECT k, courier.redis_slot(k) FROM unnest(ARRAY['foo', 'bar', 'hello', '{user1000}.following',
    '{user1000}.followers', 'foo{}{bar}', '{}', '{a', 'a}b{', '{{x}}', '']) k;
SELECT to_hex(courier.redis_slot('123456789')) AS crc16_check_value,   -- CRC16("123456789") = 0x31C3
       courier.redis_slot('\x666f6f'::bytea) = courier.redis_slot('foo') AS bytea_agrees;

-- Jump consistent hash (Lamping & Veach)
SELECT courier.jump_hash(10863919174838991, 11) AS v1, courier.jump_hash(2016238256797177309, 11) AS v2,
       courier.jump_hash(42, 10) AS v3, courier.jump_hash(-1, 1) AS one_bucket;
SELECT courier.jump_hash('user-42'::text, 100) = courier.jump_hash(hashtextextended('user-42', 0), 100) AS text_is_hashed_first;
-- growing N -> N+1 moves keys only into the new bucket, and at most 1/(N+1) + 1% of them
SELECT n, bool_and(b_new = b_old OR b_new = n) AS only_to_new,
       count(*) FILTER (WHERE b_new <> b_old)::float8 / count(*) <= 1.0 / (n + 1) + 0.01 AS moved_ok
  FROM generate_series(1, 12) n,
       LATERAL (SELECT courier.jump_hash(k, n) b_old, courier.jump_hash(k, n + 1) b_new
                  FROM generate_series(1::bigint, 20000) k) s
 GROUP BY n ORDER BY n;

-- shard_for is Citus's shard index: (uint32)(h - INT32_MIN) / (2^32 / N), capped at N - 1,
-- with h the type's default hash function.
CREATE FUNCTION pg_temp.citus_index(h integer, n integer) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT least((h::bigint + 2147483648) / (4294967296 / n), n - 1)::integer
$$;
SELECT n,
       count(*) FILTER (WHERE courier.shard_for(i, n) <> pg_temp.citus_index(hashint4(i), n)) AS int4_bad,
       count(*) FILTER (WHERE courier.shard_for(i::bigint * 7919, n) <> pg_temp.citus_index(hashint8(i::bigint * 7919), n)) AS int8_bad,
       count(*) FILTER (WHERE courier.shard_for('tenant-' || i, n) <> pg_temp.citus_index(hashtext('tenant-' || i), n)) AS text_bad,
       count(*) FILTER (WHERE courier.shard_for(md5(i::text)::uuid, n) <> pg_temp.citus_index(uuid_hash(md5(i::text)::uuid), n)) AS uuid_bad,
       count(*) FILTER (WHERE courier.shard_for(i::int2 % 30000, n) <> pg_temp.citus_index(hashint2((i % 30000)::int2), n)) AS int2_bad,
       min(courier.shard_for(i, n)) AS lo, max(courier.shard_for(i, n)) AS hi
  FROM unnest(ARRAY[1, 2, 3, 7, 10, 32, 100, 1000]) n, generate_series(-20000, 20000) i
 GROUP BY n ORDER BY n;
-- the extremes of the hash space, and the last shard absorbing the remainder (2^32 = 3 * 1431655765 + 1)
SELECT courier.shard_index(-2147483648, 3) AS first, courier.shard_index(-715827884, 3) AS end_of_0,
       courier.shard_index(-715827883, 3) AS start_of_1, courier.shard_index(2147483647, 3) AS last,
       courier.shard_index(2147483646, 3) AS remainder;
SELECT * FROM courier.shard_ranges(3);
SELECT * FROM courier.shard_range(1, 0);
SELECT * FROM courier.shard_range(32, 31);
-- ranges tile the hash space and agree with shard_for
SELECT n, bool_and(min_hash = coalesce(prev_max + 1, -2147483648)) AS contiguous, max(max_hash) = 2147483647 AS complete
  FROM (SELECT n, r.min_hash, r.max_hash, lag(r.max_hash) OVER (PARTITION BY n ORDER BY r.shard) AS prev_max
          FROM unnest(ARRAY[1, 5, 6, 7, 1024, 1000000]) n, courier.shard_ranges(n) r) x
 GROUP BY n ORDER BY n;
SELECT count(*) FILTER (WHERE NOT (hashtext(v) BETWEEN r.min_hash AND r.max_hash)) AS outside
  FROM (SELECT 'k' || i AS v FROM generate_series(1, 5000) i) s,
       LATERAL courier.shard_range(13, courier.shard_for(s.v, 13)) r;
-- other hashable types and domains; collations that are deterministic hash the bytes
CREATE DOMAIN pg_temp.tenant_id AS bigint;
SELECT courier.shard_for(42::pg_temp.tenant_id, 8) = courier.shard_for(42::bigint, 8) AS domain_uses_base,
       courier.shard_for('x'::text COLLATE "C", 8) = courier.shard_for('x'::text, 8) AS collation_ok,
       courier.shard_for(ARRAY[1, 2], 8) = pg_temp.citus_index(hash_array(ARRAY[1, 2]), 8) AS arrays,
       courier.shard_for('2024-01-01'::date, 8) = pg_temp.citus_index(hashint4(('2024-01-01'::date - '2000-01-01'::date)), 8) AS dates,
       courier.shard_for(NULL::int, 8) IS NULL AS null_value, courier.shard_for(1, NULL) IS NULL AS null_count;

-- bad input
SELECT q AS statement, pg_temp.err(q) AS error FROM unnest(ARRAY[
    'SELECT courier.shard_for(1, 0)',
    'SELECT courier.shard_for(1, -5)',
    'SELECT courier.shard_for(point(1, 2), 4)',
    'SELECT courier.shard_for(''abc'', 4)',
    'SELECT courier.shard_range(4, 4)',
    'SELECT courier.shard_range(0, 0)',
    'SELECT courier.jump_hash(1, 0)',
    'SELECT courier.jump_hash(''k''::text, -1)'
]) q;

-- Consistent-hash ring
SELECT courier.ring_create('cache', ARRAY['db1', 'db2', 'db3', 'db4', 'db5']);
SELECT name, vnodes FROM courier.rings;
SELECT node, vnodes, points, round(ownership::numeric, 2) AS ownership FROM courier.ring_ownership WHERE ring = 'cache' ORDER BY node;
-- ring_route = the first point at or after hashtextextended(key, 0), wrapping around
SELECT count(*) FILTER (WHERE courier.ring_route('cache', k) IS DISTINCT FROM coalesce(
           (SELECT p.node FROM courier.ring_points p WHERE p.ring = 'cache' AND p.pos >= hashtextextended(k, 0) ORDER BY p.pos LIMIT 1),
           (SELECT p.node FROM courier.ring_points p WHERE p.ring = 'cache' ORDER BY p.pos LIMIT 1))) AS mismatches
  FROM (SELECT 'key-' || i AS k FROM generate_series(1, 20000) i) s;
SELECT courier.ring_route('cache', NULL) IS NULL AS null_key;
-- what adding db6 would move: only onto db6, a sixth of the hash space
SELECT to_node, bool_and(from_node <> to_node) AS real_moves, round(sum(fraction)::numeric, 4) AS fraction
  FROM courier.ring_moves('cache', ARRAY['db1', 'db2', 'db3', 'db4', 'db5', 'db6']) GROUP BY to_node;
SELECT count(*) AS no_moves FROM courier.ring_moves('cache', ARRAY['db5', 'db4', 'db3', 'db2', 'db1']);
-- keys that change node when db6 joins are exactly those ring_moves announced
CREATE TEMP TABLE before AS SELECT 'key-' || i AS k, courier.ring_route('cache', 'key-' || i) AS node FROM generate_series(1, 30000) i;
CREATE TEMP TABLE announced AS SELECT * FROM courier.ring_moves('cache', ARRAY['db1', 'db2', 'db3', 'db4', 'db5', 'db6']);
SELECT courier.ring_add_node('cache', 'db6');
SELECT count(*) FILTER (WHERE b.node <> courier.ring_route('cache', b.k)) > 0 AS some_moved,
       count(*) FILTER (WHERE b.node <> courier.ring_route('cache', b.k) AND courier.ring_route('cache', b.k) <> 'db6') AS moved_elsewhere,
       count(*) FILTER (WHERE (b.node <> courier.ring_route('cache', b.k)) IS DISTINCT FROM
                              EXISTS (SELECT 1 FROM announced a WHERE hashtextextended(b.k, 0) BETWEEN a.range_start AND a.range_end)) AS unannounced
  FROM before b;
-- removing a node moves only its keys
CREATE TEMP TABLE before2 AS SELECT k, courier.ring_route('cache', k) AS node FROM before;
SELECT courier.ring_remove_node('cache', 'db2');
SELECT count(*) FILTER (WHERE b.node <> 'db2' AND b.node <> courier.ring_route('cache', b.k)) AS others_moved,
       count(*) FILTER (WHERE courier.ring_route('cache', b.k) = 'db2') AS still_on_db2
  FROM before2 b;
SELECT node, vnodes, round(ownership::numeric, 2) AS ownership FROM courier.ring_ownership WHERE ring = 'cache' ORDER BY node;
-- a weighted node (300 vnodes) owns twice the share
SELECT courier.ring_add_node('cache', 'big', 300);
SELECT node, vnodes, round(ownership::numeric, 3) AS ownership FROM courier.ring_ownership WHERE ring = 'cache' ORDER BY node;
-- skew for a key sample: a hot key shows up
SELECT node, keys, round(skew::numeric, 1) AS skew
  FROM courier.ring_balance('cache', array_fill('hot'::text, ARRAY[900]) || ARRAY(SELECT 'k' || i FROM generate_series(1, 100) i))
 WHERE keys > 800;
SELECT count(*) AS nodes, sum(keys) AS keys FROM courier.ring_balance('cache', '{}');
-- a rolled-back change leaves the ring (and this session's cache) as it was
SELECT courier.ring_route('cache', 'key-1') AS before_rollback \gset
BEGIN;
SELECT courier.ring_remove_node('cache', :'before_rollback');
SELECT courier.ring_route('cache', 'key-1') <> :'before_rollback' AS moved_inside_txn;
ROLLBACK;
SELECT courier.ring_route('cache', 'key-1') = :'before_rollback' AS restored;
-- a ring with one node and one vnode takes every key
SELECT courier.ring_create('solo', ARRAY['only'], 1);
SELECT count(DISTINCT courier.ring_route('solo', i::text)) AS nodes, min(courier.ring_route('solo', i::text)) AS node
  FROM generate_series(1, 1000) i;
SELECT points, ownership FROM courier.ring_ownership WHERE ring = 'solo';
SELECT courier.ring_add_node('solo', 'second', 1);
SELECT node, round(ownership::numeric, 3) AS ownership FROM courier.ring_ownership WHERE ring = 'solo' ORDER BY node;

-- ring errors
SELECT q AS statement, pg_temp.err(q) AS error FROM unnest(ARRAY[
    'SELECT courier.ring_create(NULL, ARRAY[''a''])',
    'SELECT courier.ring_create('''', ARRAY[''a''])',
    'SELECT courier.ring_create(''bad'', ARRAY[]::text[])',
    'SELECT courier.ring_create(''bad'', NULL)',
    'SELECT courier.ring_create(''bad'', ARRAY[''a'', NULL])',
    'SELECT courier.ring_create(''bad'', ARRAY[''a'', ''''])',
    'SELECT courier.ring_create(''bad'', ARRAY[''a'', ''b'', ''a''])',
    'SELECT courier.ring_create(''bad'', ARRAY[''a''], 0)',
    'SELECT courier.ring_create(''bad'', ARRAY[''a''], 10001)',
    'SELECT courier.ring_create(''cache'', ARRAY[''a''])',
    'SELECT courier.ring_add_node(''nope'', ''a'')',
    'SELECT courier.ring_add_node(''cache'', ''db1'')',
    'SELECT courier.ring_add_node(''cache'', NULL)',
    'SELECT courier.ring_add_node(NULL, ''x'')',
    'SELECT courier.ring_remove_node(''cache'', ''zzz'')',
    'SELECT courier.ring_remove_node(''solo'', ''second'')',
    'SELECT courier.ring_remove_node(''solo'', ''only'')',
    'SELECT courier.ring_route(NULL, ''k'')',
    'SELECT courier.ring_route(''nope'', ''k'')',
    'SELECT courier.ring_moves(''nope'', ARRAY[''a''])',
    'SELECT courier.ring_moves(''cache'', ARRAY[]::text[])',
    'SELECT courier.ring_moves(''cache'', ARRAY[''a'', ''a''])',
    'SELECT courier.ring_balance(''nope'', ARRAY[''a''])'
]) q;
SELECT count(*) AS nothing_half_created FROM courier.rings WHERE name = 'bad';
SELECT courier.ring_drop('solo');
SELECT courier.ring_drop('solo');
SELECT courier.ring_drop('solo', if_exists => true);
SELECT count(*) AS solo_points_left FROM courier.ring_points WHERE ring = 'solo';

-- Range maps: [lower, upper), NULL = unbounded; a million ids per shard
SELECT courier.map_create('orders', 'range');
SELECT courier.map_set('orders', 0, 1000000, 'shard_0');
SELECT courier.map_set('orders', 1000000, 2000000, 'shard_1');
SELECT courier.map_set('orders', 2000000, NULL, 'shard_2');
SELECT k, courier.map_route('orders', k) FROM unnest(ARRAY[0, 999999, 1000000, 1999999, 2000000, 9223372036854775807, -1]::bigint[]) k;
SELECT courier.map_route('orders', '1500000') AS text_key, courier.map_route('orders', 5) AS int_key,
       courier.map_route('orders', NULL::bigint) IS NULL AS null_key;
SELECT courier.map_set_default('orders', 'legacy');
SELECT courier.map_route('orders', -1) AS default_target;
SELECT courier.map_set('orders', 1000000, 2000000, 'shard_1b');      -- same range: new target
SELECT courier.map_route('orders', 1500000);
SELECT q AS statement, pg_temp.err(q) AS error FROM unnest(ARRAY[
    'SELECT courier.map_set(''orders'', 1500000, 2500000, ''x'')',
    'SELECT courier.map_set(''orders'', 5, 5, ''x'')',
    'SELECT courier.map_set(''orders'', ''k'', ''x'')',
    'SELECT courier.map_route(''orders'', ''abc'')',
    'SELECT courier.map_create(NULL, ''range'')',
    'SELECT courier.map_create(''m'', ''hash'')',
    'SELECT courier.map_create(''orders'', ''directory'')',
    'SELECT courier.map_route(NULL, ''k'')',
    'SELECT courier.map_route(NULL::text, 5)',
    'SELECT courier.map_route(''nope'', ''k'')',
    'SELECT courier.map_set(''nope'', ''k'', ''v'')',
    'SELECT courier.map_unset(''nope'', ''k'')']) q;
SELECT courier.map_unset('orders', 2000000, NULL) AS removed, courier.map_route('orders', 3000000) AS now_default;
SELECT courier.map_unset('orders', 2000000, NULL) AS removed_again;

-- Directory maps: explicit key -> shard with a default
SELECT courier.map_create('tenants', 'directory', 'shared');
SELECT courier.map_set('tenants', 'acme', 'dedicated_1');
SELECT courier.map_set('tenants', 'globex', 'dedicated_2');
SELECT courier.map_set('tenants', '42', 'dedicated_3');
SELECT k, courier.map_route('tenants', k) FROM unnest(ARRAY['acme', 'globex', 'initech', 'ACME', '']) k;
SELECT courier.map_route('tenants', 42) AS bigint_key;
SELECT courier.map_set('tenants', 'acme', 'dedicated_9');
SELECT courier.map_route('tenants', 'acme');
SELECT courier.map_unset('tenants', 'acme'), courier.map_route('tenants', 'acme');
SELECT courier.map_set_default('tenants', NULL);
SELECT courier.map_route('tenants', 'initech') IS NULL AS no_default_gives_null;
SELECT courier.map_set('tenants', 1, 2, 'x');

-- map errors
SELECT courier.map_drop('nope');
SELECT courier.map_drop('nope', true);
SELECT courier.map_drop('tenants');
SELECT count(*) AS entries_left FROM courier.map_keys WHERE map = 'tenants';

-- Ownership: others can route but not change
CREATE ROLE regress_shard_alice;
CREATE ROLE regress_shard_bob;
SET ROLE regress_shard_alice;
SELECT courier.ring_create('alice_ring', ARRAY['a1', 'a2']);
SELECT courier.map_create('alice_map', 'directory', 'a1');
RESET ROLE;
SET ROLE regress_shard_bob;
SELECT courier.ring_route('alice_ring', 'k') IN ('a1', 'a2') AS bob_routes;
SELECT courier.ring_add_node('alice_ring', 'b1');
SELECT courier.ring_drop('alice_ring');
SELECT courier.map_set('alice_map', 'k', 'b1');
DELETE FROM courier.ring_points WHERE ring = 'alice_ring';
UPDATE courier.maps SET default_target = 'b1' WHERE name = 'alice_map';
INSERT INTO courier.rings (name, vnodes, owner) VALUES ('fake', 1, 'regress_shard_alice');
RESET ROLE;
SELECT count(*) AS alice_points FROM courier.ring_points WHERE ring = 'alice_ring';
SET ROLE regress_shard_alice;
SELECT courier.ring_drop('alice_ring');
SELECT courier.map_drop('alice_map');
RESET ROLE;
DROP ROLE regress_shard_alice;
DROP ROLE regress_shard_bob;

SELECT courier.ring_drop('cache');
SELECT courier.map_drop('orders');
