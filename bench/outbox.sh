#!/usr/bin/env bash
# bench/outbox.sh — run by tools/bench.sh (a cluster with pg_courier preloaded, extension created).
#
#  1. drain a backlog (BACKLOG, default 100k) to the sink: Kafka REST (batched) and CloudEvents
#     (one event per request), events/s from "delivery enabled" to "outbox empty"
#  2. commit -> receipt latency p50/p99 at a steady 1,000 events/s
#  3. producer cost (pgbench, 2 clients, synchronous_commit = off, delivery paused so only the
#     producer is measured): business transaction alone, + plain INSERT into an outbox-shaped table
#     (the floor), + courier.send, + PgQ's pgq.insert_event (the anchor)
source "$REPO/tools/lib.sh"
BACKLOG=${BACKLOG:-100000}
SECS=${SECS:-10}

sink_start "$RUNDIR/sink.log"
trap sink_stop EXIT
sink_post /_sink/config '{"record_data": false, "latency_field": "committed_ms"}' >/dev/null

now_ms() { date +%s%3N; }
pending() { psql -Atc "SELECT count(*) FROM $1"; }

# drain FORMAT OUTBOX URL OPTIONS: fill a disabled outbox, enable it, time until it is empty
drain() {
    local format=$1 ob=$2 url=$3 opts=$4 t0 t1
    psql -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
SELECT courier.create_outbox('$ob', '$url', '$format', '$opts');
SELECT courier.alter_outbox('$ob', enabled => false);
INSERT INTO $ob (key, topic, payload)
SELECT 'customer-' || (i % 10000), 'orders',
       jsonb_build_object('order_id', i, 'amount', (i % 997) / 10.0, 'status', 'created')
  FROM generate_series(1, $BACKLOG) i;
SQL
    sink_post /_sink/reset >/dev/null
    t0=$(now_ms)
    psql -q -c "SELECT courier.alter_outbox('$ob', enabled => true)" >/dev/null
    # watch the sink (cheap), not count(*) on the outbox (which would compete with the worker);
    # the rate runs from the first receipt to the last
    while [ "$(json_field "$(sink_get /_sink/stats)" 'j.unique')" -lt "$BACKLOG" ]; do sleep 0.02; done
    t0=$(sink_get "/_sink/events?from=1&limit=1" | node -e 'console.log(Math.floor(JSON.parse(require("fs").readFileSync(0))[0].t))')
    t1=$(json_field "$(sink_get /_sink/stats)" 'Math.ceil(j.last_receipt_t)')
    while [ "$(pending "$ob")" != 0 ]; do sleep 0.05; done
    local got; got=$(json_field "$(sink_get /_sink/stats)" 'j.unique')
    printf '  %-44s %8d events in %6.2f s = %8.0f events/s  (%s requests)\n' "$format${opts:+ $opts}" \
        "$got" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')" \
        "$(awk -v n="$got" -v a="$t0" -v b="$t1" 'BEGIN{print n*1000/(b-a)}')" \
        "$(json_field "$(sink_get /_sink/stats)" 'j.requests')"
    psql -q -c "SELECT courier.drop_outbox('$ob')" >/dev/null
}

echo "1. drain a ${BACKLOG}-event backlog (10,000 keys) to the local sink"
drain kafka_rest_v2 bench_kafka "$(printf 'http://127.0.0.1:%s/kafka' "$SINK_PORT")" '{"topic": "orders"}'
drain cloudevents bench_ce "$(printf 'http://127.0.0.1:%s/hooks' "$SINK_PORT")" '{}'
drain cloudevents bench_ce_batch "$(printf 'http://127.0.0.1:%s/hooks' "$SINK_PORT")" '{"batch": true}'

echo
echo "2. commit -> receipt latency at a steady 1,000 events/s for ${SECS}s (cloudevents, one per request)"
psql -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
SELECT courier.create_outbox('bench_lat', 'http://127.0.0.1:$SINK_PORT/hooks');
SQL
cat > "$RUNDIR/lat.sql" <<'EOF'
\set k random(1, 1000)
SELECT courier.send('bench_lat', jsonb_build_object('committed_ms', extract(epoch FROM clock_timestamp()) * 1000), 'k' || :k);
EOF
sink_post /_sink/reset >/dev/null
pgbench -n -M prepared -c 2 -j 2 -R 1000 -T "$SECS" -f "$RUNDIR/lat.sql" postgres >"$RUNDIR/lat.log" 2>&1
while [ "$(pending bench_lat)" != 0 ]; do sleep 0.05; done
lat=$(sink_get "/_sink/latency?field=committed_ms")
printf '  %s events: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n' "$(json_field "$lat" 'j.count')" \
    "$(json_field "$lat" 'j.p50')" "$(json_field "$lat" 'j.p90')" "$(json_field "$lat" 'j.p99')" "$(json_field "$lat" 'j.max')"

echo
echo "3. producer cost: pgbench -M prepared, 2 clients, ${SECS}s each, synchronous_commit = off, delivery paused"
psql -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE TABLE bench_orders (id bigserial PRIMARY KEY, customer int NOT NULL, amount numeric NOT NULL,
                           created_at timestamptz NOT NULL DEFAULT now());
SELECT courier.create_outbox('bench_producer', 'http://127.0.0.1:$SINK_PORT/hooks');
SELECT courier.alter_outbox('bench_producer', enabled => false);
CREATE TABLE bench_plain (LIKE bench_producer INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE bench_plain ALTER id ADD GENERATED ALWAYS AS IDENTITY;
CREATE EXTENSION IF NOT EXISTS pgq;
SELECT pgq.create_queue('bench_q');
SQL
run_tps() {
    local name=$1 body=$2
    printf '\\set c random(1, 10000)\nBEGIN;\nINSERT INTO bench_orders (customer, amount) VALUES (:c, 42.5);\n%s\nCOMMIT;\n' "$body" \
        > "$RUNDIR/p_$name.sql"
    PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c 2 -j 2 -T "$SECS" -f "$RUNDIR/p_$name.sql" postgres \
        >"$RUNDIR/p_$name.log" 2>&1 || { cat "$RUNDIR/p_$name.log" >&2; return 1; }
    sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$RUNDIR/p_$name.log"
}
base=$(run_tps base '')
plain=$(run_tps plain "INSERT INTO bench_plain (key, topic, payload) VALUES ('customer-' || :c::int, 'order.created', jsonb_build_object('customer', :c::int, 'amount', 42.5));")
send=$(run_tps send "SELECT courier.send('bench_producer', jsonb_build_object('customer', :c::int, 'amount', 42.5), 'customer-' || :c::int, 'order.created');")
pgq=$(run_tps pgq "SELECT pgq.insert_event('bench_q', 'order.created', jsonb_build_object('customer', :c::int, 'amount', 42.5)::text);")
row() { printf '  %-48s %9.0f tps  %5.2fx business  %5.2fx floor\n' "$1" "$2" "$(awk -v a="$2" -v b="$base" 'BEGIN{print a/b}')" "$(awk -v a="$2" -v b="$plain" 'BEGIN{print a/b}')"; }
row "business transaction alone" "$base"
row "+ plain INSERT into an outbox-shaped table" "$plain"
row "+ courier.send" "$send"
row "+ pgq.insert_event (PgQ)" "$pgq"
printf '  courier.send / plain INSERT floor = %.3f   courier.send / PgQ = %.3f\n' \
    "$(awk -v a="$send" -v b="$plain" 'BEGIN{print a/b}')" "$(awk -v a="$send" -v b="$pgq" 'BEGIN{print a/b}')"
psql -q -c "SELECT courier.drop_outbox('bench_producer'); SELECT courier.drop_outbox('bench_lat'); DROP TABLE bench_plain, bench_orders; SELECT pgq.drop_queue('bench_q')" >/dev/null

echo
echo "4. drain ${BACKLOG} events with 10% of requests answered 503 (Kafka REST, batched)"
sink_post /_sink/faults '{"status": {"code": 503, "rate": 0.1}}' >/dev/null
drain kafka_rest_v2 bench_kafka_503 "$(printf 'http://127.0.0.1:%s/kafka' "$SINK_PORT")" \
    '{"topic": "orders", "retry_base_ms": 50, "retry_max_ms": 1000}'
curl -sf -X DELETE "http://127.0.0.1:$SINK_CONTROL/_sink/faults" >/dev/null

BIG=${BIG_BACKLOG:-1000000}
echo
echo "5. a ${BIG}-event backlog built while the endpoint is down, drained when it comes back (Kafka REST)"
worker=$(psql -Atc "SELECT pid FROM courier.worker_status() WHERE database = current_database()")
rss_kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
psql -q -v ON_ERROR_STOP=1 -c "SELECT courier.create_outbox('bench_big', 'http://127.0.0.1:$SINK_PORT/kafka', 'kafka_rest_v2', '{\"topic\": \"orders\", \"retry_base_ms\": 200, \"retry_max_ms\": 2000}')" >/dev/null
size() { psql -Atc "SELECT pg_size_pretty(pg_total_relation_size('bench_big'))"; }
echo "  table size empty:            $(size)"
sink_post /_sink/stop_listening >/dev/null
t0=$(now_ms)
for i in $(seq 0 9); do
    psql -q -c "INSERT INTO bench_big (key, topic, payload)
                SELECT 'customer-' || (g % 10000), 'orders', jsonb_build_object('order_id', g, 'amount', (g % 997) / 10.0)
                  FROM generate_series($((i * BIG / 10 + 1)), $(((i + 1) * BIG / 10))) g"
done
t1=$(now_ms)
printf '  committed %d events in %.1f s while the endpoint was down\n' "$BIG" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"
echo "  breaker: $(psql -Atc "SELECT state || ', opened ' || opens || ' time(s)' FROM courier.breakers() WHERE endpoint = courier._origin('http://127.0.0.1:$SINK_PORT/kafka')")"
echo "  table size with the backlog: $(size)"
anon0=$(rss_kb "$worker" RssAnon)
failed0=$(psql -Atc "SELECT failed_attempts FROM courier.outbox_stats WHERE outbox = 'bench_big'::regclass")
sink_post /_sink/reset >/dev/null
sink_post /_sink/start_listening >/dev/null
t0=$(now_ms); peak_anon=$anon0; samples=""
while [ "$(json_field "$(sink_get /_sink/stats)" 'j.unique')" -lt "$BIG" ]; do
    a=$(rss_kb "$worker" RssAnon); [ "$a" -gt "$peak_anon" ] && peak_anon=$a
    sleep 0.2
done
t1=$(now_ms)
while [ "$(pending bench_big)" != 0 ]; do sleep 0.05; done
got=$(json_field "$(sink_get /_sink/stats)" 'j.unique')
printf '  recovery -> empty backlog: %.1f s, %d events = %.0f events/s (includes waiting out the breaker, reset %s)\n' \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')" "$got" \
    "$(awk -v n="$got" -v a="$t0" -v b="$t1" 'BEGIN{print n*1000/(b-a)}')" "$(psql -Atc 'SHOW courier.breaker_reset_ms')"
echo "  worker private memory (RssAnon): ${anon0} kB before, ${peak_anon} kB peak while draining; VmHWM $(rss_kb "$worker" VmHWM) kB (includes shared buffers touched)"
echo "  failed attempts: ${failed0} while the endpoint was down (before the breaker opened), $(( $(psql -Atc "SELECT failed_attempts FROM courier.outbox_stats WHERE outbox = 'bench_big'::regclass") - failed0 )) during the drain (a timeout caused by the worker would count here)"
echo "  table size after the drain:  $(size); after VACUUM: $(psql -q -c 'VACUUM bench_big' && size)"
psql -q -c "SELECT courier.drop_outbox('bench_big')" >/dev/null
