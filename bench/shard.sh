#!/usr/bin/env bash
# bench/shard.sh — throughput of the shard routing functions over 1M values, each compared with
# hashtext() measured in the same run on the same server.
#
# Every query is `SELECT count(f(i)) FROM generate_series(1, N) i` (best of 3).  The cost of the
# loop itself (generate_series + count, and i::text where the function takes text) is measured too
# and subtracted, so "net ns/call" is the function alone; "vs hashtext" is net cost / hashtext's net
# cost (targets in issue 6: shard_for <= 1.2, ring_route with 10 nodes x 150 vnodes <= 2).  Raw
# wall-clock ratios are printed as well.  No pass/fail: figures only.
#
# Needs a running server with pg_courier created in $PGDATABASE (tools/bench.sh provides one).
set -euo pipefail
N=${SHARD_BENCH_N:-1000000}
REPS=${SHARD_BENCH_REPS:-3}

psql -X -q -v ON_ERROR_STOP=1 -v n="$N" -v reps="$REPS" <<'SQL'
SET client_min_messages = warning;
SELECT courier.ring_drop('bench_ring', if_exists => true);
SELECT courier.map_drop('bench_range', if_exists => true);
SELECT courier.ring_create('bench_ring', ARRAY(SELECT 'node' || i FROM generate_series(1, 10) i), 150);
SELECT courier.map_create('bench_range', 'range');
SELECT courier.map_set('bench_range', s * 100000, (s + 1) * 100000, 'shard_' || s) FROM generate_series(0, 9) s;
RESET client_min_messages;

CREATE TEMP TABLE bench (ord serial, name text, baseline text, sql text, ms float8);
INSERT INTO bench (name, baseline, sql) VALUES
    ('loop (int)',               NULL,         'SELECT count(i) FROM generate_series(1, :n) i'),
    ('loop (i::text)',           NULL,         'SELECT count(i::text) FROM generate_series(1, :n) i'),
    ('hashtext(i::text)',        'loop (i::text)', 'SELECT count(hashtext(i::text)) FROM generate_series(1, :n) i'),
    ('shard_for(int, 32)',       'loop (int)', 'SELECT count(courier.shard_for(i, 32)) FROM generate_series(1, :n) i'),
    ('shard_for(text, 32)',      'loop (i::text)', 'SELECT count(courier.shard_for(i::text, 32)) FROM generate_series(1, :n) i'),
    ('jump_hash(bigint, 32)',    'loop (int)', 'SELECT count(courier.jump_hash(i::bigint, 32)) FROM generate_series(1, :n) i'),
    ('jump_hash(text, 32)',      'loop (i::text)', 'SELECT count(courier.jump_hash(i::text, 32)) FROM generate_series(1, :n) i'),
    ('redis_slot(text)',         'loop (i::text)', 'SELECT count(courier.redis_slot(i::text)) FROM generate_series(1, :n) i'),
    ('ring_route (10 x 150)',    'loop (i::text)', 'SELECT count(courier.ring_route(''bench_ring'', i::text)) FROM generate_series(1, :n) i'),
    ('map_route (range, 10)',    'loop (int)', 'SELECT count(courier.map_route(''bench_range'', i::bigint)) FROM generate_series(1, :n) i');
UPDATE bench SET sql = replace(sql, ':n', :'n');

-- best of :reps runs, timed inside the server
SELECT set_config('bench.reps', :'reps', false) \gset
DO $$
DECLARE
    b  record;
    t0 timestamptz;
    best float8;
BEGIN
    FOR b IN SELECT * FROM bench ORDER BY ord LOOP
        best := 'Infinity';
        FOR r IN 1 .. current_setting('bench.reps')::int LOOP
            t0 := clock_timestamp();
            EXECUTE b.sql;
            best := least(best, extract(epoch FROM clock_timestamp() - t0) * 1000);
        END LOOP;
        UPDATE bench SET ms = best WHERE ord = b.ord;
    END LOOP;
END
$$;

\echo
\echo 'shard routing: :n calls per function, best of :reps (net = minus the loop baseline)'
WITH h AS (SELECT b.ms - l.ms AS net FROM bench b JOIN bench l ON l.name = b.baseline WHERE b.name = 'hashtext(i::text)'),
     raw AS (SELECT ms FROM bench WHERE name = 'hashtext(i::text)')
SELECT b.name AS function,
       round(b.ms::numeric, 1) AS total_ms,
       round((:n / (b.ms / 1000))::numeric) AS calls_per_s,
       CASE WHEN b.baseline IS NOT NULL THEN round(((b.ms - l.ms) * 1e6 / :n)::numeric, 1) END AS net_ns_per_call,
       CASE WHEN b.baseline IS NOT NULL AND b.name <> 'hashtext(i::text)'
            THEN round(((b.ms - l.ms) / h.net)::numeric, 2) END AS net_vs_hashtext,
       round((b.ms / raw.ms)::numeric, 2) AS raw_vs_hashtext
  FROM bench b LEFT JOIN bench l ON l.name = b.baseline, h, raw
 ORDER BY b.ord;

SELECT courier.ring_drop('bench_ring');
SELECT courier.map_drop('bench_range');
SQL
