#!/usr/bin/env bash
# bench/saga.sh — saga step transitions per second, 2 clients over 10k sagas, against the floor of a
# plain UPDATE of a status column, all measured in this run on this cluster.
#
# Run by tools/bench.sh (a cluster preloading pg_courier, the extension created in $PGDATABASE,
# PGHOST/PGPORT/PGUSER/PGDATABASE set, RUNDIR writable).  Standalone:
#   PG_CONFIG=... bash -c 'source tools/lib.sh; setup_base; make_rundir bench-saga; cluster_start $RUNDIR/c;
#                          psql -c "create extension pg_courier"; bash bench/saga.sh; cluster_stop'
#
# Each pgbench transaction drives one saga of 4 steps to completion: 8 statements, each its own
# transaction (started + succeeded per step).  The floor does the same 8 single-row UPDATEs on a
# plain table.  A third run drives sagas whose type names an outbox: each succeeded transition also
# writes the next command event (the outbox is disabled so the worker does not deliver during the run).
# Every transition is its own transaction, committed asynchronously in all three runs.
set -euo pipefail

SAGAS=${SAGAS:-10000}
CLIENTS=${CLIENTS:-2}
PER_CLIENT=$((SAGAS / CLIENTS))
RUNDIR=${RUNDIR:-$(mktemp -d)}
dir=$RUNDIR/bench-saga
mkdir -p "$dir"

q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

say() { printf '%s\n' "$*" >&2; }

say "saga bench: $SAGAS sagas, $CLIENTS clients, 4 steps per saga"
q <<SQL
DROP TABLE IF EXISTS bench_plain;
DROP SEQUENCE IF EXISTS bench_plain_seq, bench_saga_seq, bench_outbox_seq;
CREATE TABLE bench_plain (id integer PRIMARY KEY, status text NOT NULL, updated_at timestamptz NOT NULL)
    WITH (fillfactor = 80);
INSERT INTO bench_plain SELECT i, 'pending', now() FROM generate_series(1, $SAGAS) i;
CREATE SEQUENCE bench_plain_seq; CREATE SEQUENCE bench_saga_seq; CREATE SEQUENCE bench_outbox_seq;

DELETE FROM courier.saga_instances WHERE saga_type IN ('bench', 'bench_outbox');
SELECT courier.saga_define('bench', '[{"name": "a", "compensation": "ua", "timeout": "1 min"},
    {"name": "b", "compensation": "ub", "timeout": "1 min"}, {"name": "c", "compensation": "uc"}, {"name": "d"}]');
SELECT courier.create_outbox('bench_commands', 'http://127.0.0.1:9/bench')
 WHERE to_regclass('bench_commands') IS NULL;
SELECT courier.alter_outbox('bench_commands', enabled => false);
SELECT courier.saga_define('bench_outbox', '[{"name": "a", "compensation": "ua", "timeout": "1 min"},
    {"name": "b", "compensation": "ub", "timeout": "1 min"}, {"name": "c", "compensation": "uc"}, {"name": "d"}]',
    'bench_commands');
SELECT count(courier.saga_start('bench', '{"amount": 1}', md5('s' || i)::uuid)) FROM generate_series(1, $SAGAS) i;
SELECT count(courier.saga_start('bench_outbox', '{"amount": 1}', md5('o' || i)::uuid)) FROM generate_series(1, $SAGAS) i;
VACUUM ANALYZE bench_plain;
VACUUM ANALYZE courier.saga_instances;
SQL

cat >"$dir/plain.sql" <<'EOF2'
SELECT nextval('bench_plain_seq') AS n \gset
UPDATE bench_plain SET status = 'a running', updated_at = now() WHERE id = :n;
UPDATE bench_plain SET status = 'a succeeded', updated_at = now() WHERE id = :n;
UPDATE bench_plain SET status = 'b running', updated_at = now() WHERE id = :n;
UPDATE bench_plain SET status = 'b succeeded', updated_at = now() WHERE id = :n;
UPDATE bench_plain SET status = 'c running', updated_at = now() WHERE id = :n;
UPDATE bench_plain SET status = 'c succeeded', updated_at = now() WHERE id = :n;
UPDATE bench_plain SET status = 'd running', updated_at = now() WHERE id = :n;
UPDATE bench_plain SET status = 'completed', updated_at = now() WHERE id = :n;
EOF2
{
    echo "SELECT md5('s' || nextval('bench_saga_seq'))::uuid AS id \\gset"
    for s in a b c d; do
        echo "SELECT status FROM courier.saga_step_started(:id::uuid, '$s');"
        echo "SELECT status FROM courier.saga_step_succeeded(:id::uuid, '$s', '{\"ok\": true}');"
    done
} >"$dir/saga.sql"
{
    echo "SELECT md5('o' || nextval('bench_outbox_seq'))::uuid AS id \\gset"
    for s in a b c d; do
        echo "SELECT status FROM courier.saga_step_succeeded(:id::uuid, '$s', '{\"ok\": true}');"
    done
} >"$dir/outbox.sql"

# Commits are asynchronous in the measured runs (same for the floor): with one transaction per
# transition, a synchronous commit measures the disk's flush latency, not the transition.
export PGOPTIONS="${PGOPTIONS:-} -c synchronous_commit=off"

# run NAME SCRIPT STATEMENTS_PER_TX: transitions (statements) per second
run() {
    local out tps
    out=$(pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -t "$PER_CLIENT" -f "$2" 2>&1) \
        || { echo "$out" >&2; exit 1; }
    tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' <<<"$out" | head -1)
    awk -v t="$tps" -v k="$3" 'BEGIN { printf "%.0f", t * k }'
}

plain=$(run plain "$dir/plain.sql" 8)
saga=$(run saga "$dir/saga.sql" 8)
outbox=$(run outbox "$dir/outbox.sql" 4)

check=$(q -At -c "SELECT (SELECT count(*) FROM courier.saga_instances WHERE saga_type = 'bench' AND status = 'completed')
                      || ' ' || (SELECT count(*) FROM courier.saga_instances WHERE saga_type = 'bench_outbox' AND status = 'completed')
                      || ' ' || (SELECT count(*) FROM bench_commands)")
read -r done_saga done_outbox commands <<<"$check"

printf '\n%-46s %12s %8s\n' "transitions ($CLIENTS clients, $SAGAS sagas, async commit)" "per second" "vs floor"
printf '%-46s %12s %8s\n' "plain UPDATE of a status column (floor)" "$plain" "1.00"
printf '%-46s %12s %8s\n' "saga_step_started/succeeded" "$saga" "$(awk -v a="$saga" -v b="$plain" 'BEGIN { printf "%.2f", a / b }')"
printf '%-46s %12s %8s\n' "saga_step_succeeded + outbox command" "$outbox" "$(awk -v a="$outbox" -v b="$plain" 'BEGIN { printf "%.2f", a / b }')"
printf '\ncompleted sagas: %s (state only), %s (outbox); command events written: %s (4 per saga)\n' \
    "$done_saga" "$done_outbox" "$commands"

# leave the cluster as we found it
q >/dev/null <<'SQL'
DELETE FROM courier.saga_instances WHERE saga_type IN ('bench', 'bench_outbox');
DELETE FROM courier.saga_types WHERE saga_type IN ('bench', 'bench_outbox');
SELECT courier.drop_outbox('bench_commands');
DROP TABLE bench_plain;
DROP SEQUENCE bench_plain_seq, bench_saga_seq, bench_outbox_seq;
SQL
