#!/usr/bin/env bash
# bench/idempotency.sh — courier.idempotency_begin/complete against the naive PL/pgSQL pattern
# (SELECT the key; if absent, INSERT it), measured in the same run on the same server.
#
# and against themselves with key spaces off (courier.key_spaces = off: one shared key space, as
# 0.1.0 had; the same-run "before" of the per-role key spaces, column "shared").
#
#   fresh   begin + complete of a new key in one transaction (the first request of a key)
#   replay  begin of a completed key (a client's retry)
#   race    4 clients, pairs of requests on the same new key at the same moment, 2 ms of "work"
#           between begin and complete: counts keys that two requests both 'started' (must be 0)
#
# Run by tools/bench.sh (cluster running, extension created, PG* set, RUNDIR scratch), or standalone:
#   PG_CONFIG=... bash -c 'source tools/lib.sh; setup_base; make_rundir benchX; cluster_start $RUNDIR/c;
#                          psql -c "create extension pg_courier"; bash bench/idempotency.sh; cluster_stop'
# synchronous_commit is off for every session here, so that the figures show the cost of the
# functions rather than of the disk.  Prints figures and ratios; never passes or fails on time.
set -euo pipefail

DUR=${IDEM_BENCH_SECONDS:-4}
ROUNDS=${IDEM_BENCH_ROUNDS:-5}
RACE_DUR=${IDEM_BENCH_RACE_SECONDS:-5}
CLIENTS=${IDEM_BENCH_CLIENTS:-2}
WORK=$(mktemp -d "${RUNDIR:-/tmp}/idem-bench.XXXXXX")
export PGOPTIONS="-c synchronous_commit=off"

psql -qX -v ON_ERROR_STOP=1 <<'SQL'
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_idem CASCADE;
CREATE SCHEMA bench_idem;
CREATE SEQUENCE bench_idem.race_seq;
CREATE TABLE bench_idem.race_log (impl text, n bigint, started int);

-- The naive implementation: the key is looked up, then inserted.  No unique constraint: the SELECT
-- is what is supposed to prevent duplicates (with a primary key the race shows up as unique-violation
-- errors in the client instead).
CREATE TABLE bench_idem.naive_keys (
    scope text NOT NULL, key text NOT NULL, fingerprint text, state text NOT NULL,
    status_code int, response jsonb, created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL);
CREATE INDEX ON bench_idem.naive_keys (scope, key);

CREATE FUNCTION bench_idem.naive_begin(p_key text, p_fp text DEFAULT NULL, p_scope text DEFAULT '',
                                       OUT outcome text, OUT status_code int, OUT response jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    r bench_idem.naive_keys;
BEGIN
    SELECT * INTO r FROM bench_idem.naive_keys k
     WHERE k.scope = p_scope AND k.key = p_key AND k.expires_at > now();
    IF FOUND THEN
        IF r.fingerprint IS DISTINCT FROM p_fp THEN
            outcome := 'mismatch';
        ELSIF r.state = 'completed' THEN
            outcome := 'replay'; status_code := r.status_code; response := r.response;
        ELSE
            outcome := 'in_progress';
        END IF;
        RETURN;
    END IF;
    INSERT INTO bench_idem.naive_keys (scope, key, fingerprint, state, expires_at)
    VALUES (p_scope, p_key, p_fp, 'in_progress', now() + interval '24 hours');
    outcome := 'started';
END
$$;

CREATE FUNCTION bench_idem.naive_complete(p_key text, p_status int, p_response jsonb, p_scope text DEFAULT '')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bench_idem.naive_keys SET state = 'completed', status_code = p_status, response = p_response
     WHERE scope = p_scope AND key = p_key AND state = 'in_progress';
END
$$;

-- 10,000 completed keys in each implementation, for the replay runs.
TRUNCATE courier.idempotency_keys;
\o /dev/null
SELECT count(*) FROM (
    SELECT courier.idempotency_begin('r' || i, 'fp'), courier.idempotency_complete('r' || i, 201, '{"id": 1, "status": "created"}')
      FROM generate_series(1, 10000) i) x;
SET courier.key_spaces = off;
SELECT count(*) FROM (
    SELECT courier.idempotency_begin('r' || i, 'fp'), courier.idempotency_complete('r' || i, 201, '{"id": 1, "status": "created"}')
      FROM generate_series(1, 10000) i) x;
RESET courier.key_spaces;
\o
INSERT INTO bench_idem.naive_keys (scope, key, fingerprint, state, status_code, response, expires_at)
SELECT '', 'r' || i, 'fp', 'completed', 201, '{"id": 1, "status": "created"}', now() + interval '24 hours'
  FROM generate_series(1, 10000) i;
VACUUM ANALYZE courier.idempotency_keys;
VACUUM ANALYZE bench_idem.naive_keys;
SQL

cat >"$WORK/fresh_courier.sql" <<'EOF2'
\set k random(1, 9000000000000000000)
BEGIN;
SELECT outcome FROM courier.idempotency_begin('f' || :client_id || '-' || :k, 'fp');
SELECT courier.idempotency_complete('f' || :client_id || '-' || :k, 201, '{"id": 1, "status": "created"}');
END;
EOF2
cat >"$WORK/fresh_naive.sql" <<'EOF2'
\set k random(1, 9000000000000000000)
BEGIN;
SELECT outcome FROM bench_idem.naive_begin('f' || :client_id || '-' || :k, 'fp');
SELECT bench_idem.naive_complete('f' || :client_id || '-' || :k, 201, '{"id": 1, "status": "created"}');
END;
EOF2
cat >"$WORK/replay_courier.sql" <<'EOF2'
\set k random(1, 10000)
SELECT outcome, status_code, response FROM courier.idempotency_begin('r' || :k, 'fp');
EOF2
cat >"$WORK/replay_naive.sql" <<'EOF2'
\set k random(1, 10000)
SELECT outcome, status_code, response FROM bench_idem.naive_begin('r' || :k, 'fp');
EOF2
cp "$WORK/fresh_courier.sql" "$WORK/fresh_shared.sql"
cp "$WORK/replay_courier.sql" "$WORK/replay_shared.sql"
for impl in courier naive; do
    if [ $impl = courier ]; then b=courier.idempotency_begin; c=courier.idempotency_complete; else b=bench_idem.naive_begin; c=bench_idem.naive_complete; fi
    cat >"$WORK/race_$impl.sql" <<EOF2
SELECT nextval('bench_idem.race_seq') / 2 AS n \gset
BEGIN;
SELECT (outcome = 'started')::int AS st FROM $b('race-' || :n, 'fp') \gset
INSERT INTO bench_idem.race_log VALUES ('$impl', :n, :st);
SELECT pg_sleep(0.002);
\if :st
SELECT $c('race-' || :n, 200, '{}');
\endif
END;
EOF2
done

# tps SCRIPT CLIENTS SECONDS: run pgbench, print its tps (the *_shared scripts with key spaces off)
tps() {
    case "$1" in *_shared.sql) local PGOPTIONS="$PGOPTIONS -c courier.key_spaces=off"; export PGOPTIONS ;; esac
    pgbench -n -M prepared -c "$2" -j "$2" -T "$3" -f "$1" 2>"$WORK/pgbench.err" | sed -nE 's/^tps = ([0-9.]+).*/\1/p' | head -1 \
        || { cat "$WORK/pgbench.err" >&2; return 1; }
}

# The machine may be shared: naive and courier runs alternate, ROUNDS times, and the figures are the
# means over the rounds, so that load from elsewhere hits both alike.
declare -A T R B
for mode in fresh replay; do
    for impl in naive shared courier; do T[$mode,$impl]=0; B[$mode,$impl]=0; done
    for round in $(seq "$ROUNDS"); do
        for impl in naive shared courier; do
            t=$(tps "$WORK/${mode}_$impl.sql" "$CLIENTS" "$DUR")
            T[$mode,$impl]=$(echo "${T[$mode,$impl]} + $t / $ROUNDS" | bc -l)
            if [ "$(echo "$t > ${B[$mode,$impl]}" | bc -l)" = 1 ]; then B[$mode,$impl]=$t; fi
            R[$mode,$impl]="${R[$mode,$impl]:-} $(printf '%.0f' "$t")"
        done
    done
done
tps "$WORK/race_naive.sql" 4 "$RACE_DUR" >/dev/null
tps "$WORK/race_courier.sql" 4 "$RACE_DUR" >/dev/null

race=$(psql -qXAt -F ' ' -c "
    SELECT impl, count(DISTINCT n),
           count(*) FILTER (WHERE started = 1),
           (SELECT count(*) FROM (SELECT 1 FROM bench_idem.race_log l2 WHERE l2.impl = l.impl
                                   GROUP BY n HAVING sum(started) > 1) d)
      FROM bench_idem.race_log l GROUP BY impl ORDER BY impl")

echo
echo "idempotency keys — pgbench -M prepared, $CLIENTS clients, $ROUNDS alternating rounds of ${DUR}s, synchronous_commit=off"
printf '%-8s %11s %11s %11s %8s %13s   %s\n' run naive_tps shared_tps courier_tps ratio "key spaces" \
    "per round (naive | shared | courier)"
for mode in fresh replay; do
    printf '%-8s %11.0f %11.0f %11.0f %7.2fx %12.3fx   %s |%s |%s\n' "$mode" "${T[$mode,naive]}" "${T[$mode,shared]}" \
        "${T[$mode,courier]}" "$(echo "${T[$mode,courier]} / ${T[$mode,naive]}" | bc -l)" \
        "$(echo "${B[$mode,courier]} / ${B[$mode,shared]}" | bc -l)" \
        "${R[$mode,naive]# }" "${R[$mode,shared]}" "${R[$mode,courier]}"
done
echo "(tps: means over the rounds; ratio: courier / naive, of the means.  key spaces: courier (per-role"
echo " key spaces, the default) / shared (courier.key_spaces = off, the 0.1.0 behaviour), of the best"
echo " round of each (the least disturbed by other load) — the cost of key spaces, target >= 0.95)"
echo
echo "race — 4 clients, ${RACE_DUR}s, two requests per key at the same moment, 2 ms of work in between"
printf '%-8s %8s %10s %22s\n' impl keys started keys_started_twice
while read -r impl keys started dup; do
    printf '%-8s %8s %10s %22s\n' "$impl" "$keys" "$started" "$dup"
done <<<"$race"

psql -qX -c "SET client_min_messages = warning; DROP SCHEMA bench_idem CASCADE; TRUNCATE courier.idempotency_keys;"
rm -rf "$WORK"
