#!/usr/bin/env bash
# bench/outbox.sh — run by tools/bench.sh (a cluster with pg_courier preloaded, extension created).
#
#  1. drain a backlog (BACKLOG, default 100k, 10,000 keys) to the sink: Kafka REST (batched) and
#     CloudEvents (one event per request, and batched), events/s from the first receipt to the last
#  2. commit -> receipt latency p50/p99 at a steady 1,000 events/s
#  3. producer cost (pgbench, 2 clients, synchronous_commit = off, delivery paused so only the
#     producer is measured): business transaction alone, + plain INSERT into an outbox-shaped table
#     (the floor), + courier.send, + an INSERT into the outbox itself (its trigger without the
#     function around it), + PgQ's pgq.insert_event (the anchor)
#  4. drain BACKLOG with 10% of requests answered 503 without Retry-After (Kafka REST): to the worker
#     a plain retriable failure, so this measures the per-row backoff and per-key waiting (and the
#     breaker, which it says how often opened), not a server's Retry-After pacing
#  5. a BIG_BACKLOG (default 1M) backlog built while the endpoint is down, drained when it comes back
#     (Kafka REST), with 10,000 keys (5a) and with one key (5b), each by a freshly restarted worker:
#     drain rate, the worker's private memory (RssAnon) before and at its peak, table size; a drain
#     still running after BIG_CAP_S (5a, default 60) or ONE_KEY_CAP_S (5b, default 30) seconds is
#     stopped and reported as far as it got
#  6. hot keys: a BACKLOG-event Kafka REST backlog committed in ONE transaction into an ENABLED fresh
#     outbox, with BACKLOG distinct keys, 1,000, 10 and 1 key: commit -> first
#     receipt, commit -> last and first -> last receipt rates, requests; the commit time is read
#     in the database (clock_timestamp() right after COMMIT returns, same session), receipts are
#     the sink's timestamps (epoch ms, same clock); a run still going after HOT_CAP_S (default 15)
#     seconds is stopped and its rates are over the events received by then.  A last run repeats
#     the distinct keys into an outbox that first delivered one event, as one in steady use would
#     have: the worker then has its statements' (generic) plans, made while the table was tiny
source "$REPO/tools/lib.sh"
BACKLOG=${BACKLOG:-100000}
SECS=${SECS:-10}
# a run that drains slower than this stops there and reports the rate so far (a collapse on hot
# keys would otherwise take many minutes): section 6 per run, section 5 per drain
HOT_CAP_S=${HOT_CAP_S:-15}
BIG_CAP_S=${BIG_CAP_S:-60}
ONE_KEY_CAP_S=${ONE_KEY_CAP_S:-30}

sink_start "$RUNDIR/sink.log"
trap sink_stop EXIT
sink_post /_sink/config '{"record_data": false, "latency_field": "committed_ms"}' >/dev/null

now_ms() { date +%s%3N; }
pending() { psql -Atc "SELECT count(*) FROM $1"; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN{printf "%.0f", n*1000/(b-a)}'; }   # N events from ms A to ms B
sink_stat() { json_field "$(sink_get /_sink/stats)" "$1"; }
# sink_num NAME: a top-level integer of /_sink/stats without starting node: what polling loops use,
# so that watching the sink every 20 ms does not take a core from the worker and the sink
sink_num() { sink_get /_sink/stats | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
first_receipt_ms() { sink_get "/_sink/events?from=1&limit=1" | node -e 'const e=JSON.parse(require("fs").readFileSync(0)); console.log(e.length ? e[0].t : "")'; }
kafka_url="http://127.0.0.1:$SINK_PORT/kafka"
# wait_unique N CAP_S: until the sink has N distinct events (0), or CAP_S seconds passed (1)
wait_unique() {
    local end=$(( $(now_ms) + $2 * 1000 ))
    while [ "$(sink_num unique)" -lt "$1" ]; do
        [ "$(now_ms)" -lt "$end" ] || return 1
        sleep 0.02
    done
}
# stop OUTBOX: disable it and wait until the requests already out are answered (the sink's count
# stands still), so that none lands after the next run's reset
stop_outbox() {
    local n m
    psql -q -c "SELECT courier.alter_outbox('$1', enabled => false)" >/dev/null
    n=$(sink_num requests)
    while sleep 0.5; m=$(sink_num requests); [ "$m" != "$n" ]; do n=$m; done
}
breaker_opens() { psql -Atc "SELECT coalesce(sum(opens), 0) FROM courier.breakers() WHERE endpoint = courier._origin('$kafka_url')"; }

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
    while [ "$(sink_num unique)" -lt "$BACKLOG" ]; do sleep 0.02; done
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
direct=$(run_tps direct "INSERT INTO bench_producer (key, topic, payload) VALUES ('customer-' || :c::int, 'order.created', jsonb_build_object('customer', :c::int, 'amount', 42.5));")
pgq=$(run_tps pgq "SELECT pgq.insert_event('bench_q', 'order.created', jsonb_build_object('customer', :c::int, 'amount', 42.5)::text);")
row() { printf '  %-48s %9.0f tps  %5.2fx business  %5.2fx floor\n' "$1" "$2" "$(awk -v a="$2" -v b="$base" 'BEGIN{print a/b}')" "$(awk -v a="$2" -v b="$plain" 'BEGIN{print a/b}')"; }
row "business transaction alone" "$base"
row "+ plain INSERT into an outbox-shaped table" "$plain"
row "+ courier.send" "$send"
row "+ INSERT into the outbox (its trigger only)" "$direct"
row "+ pgq.insert_event (PgQ)" "$pgq"
printf '  courier.send / plain INSERT floor = %.3f   courier.send / PgQ = %.3f   INSERT into the outbox / floor = %.3f\n' \
    "$(awk -v a="$send" -v b="$plain" 'BEGIN{print a/b}')" "$(awk -v a="$send" -v b="$pgq" 'BEGIN{print a/b}')" \
    "$(awk -v a="$direct" -v b="$plain" 'BEGIN{print a/b}')"
psql -q -c "SELECT courier.drop_outbox('bench_producer'); SELECT courier.drop_outbox('bench_lat'); DROP TABLE bench_plain, bench_orders; SELECT pgq.drop_queue('bench_q')" >/dev/null

echo
echo "4. drain ${BACKLOG} events, 10% of requests answered 503 WITHOUT Retry-After (Kafka REST, batched)"
echo "   (no Retry-After: to the worker a plain retriable failure, as a 500 would be -- per-row backoff from"
echo "   retry_base_ms 50 with later events of those keys waiting, breaker after $(psql -Atc 'SHOW courier.breaker_failure_threshold') consecutive failures; no server pacing)"
opens0=$(breaker_opens)
sink_post /_sink/faults '{"status": {"code": 503, "rate": 0.1}}' >/dev/null
drain kafka_rest_v2 bench_kafka_503 "$kafka_url" '{"topic": "orders", "retry_base_ms": 50, "retry_max_ms": 1000}'
curl -sf -X DELETE "http://127.0.0.1:$SINK_CONTROL/_sink/faults" >/dev/null
echo "  $(sink_stat 'j.status_counts["503"] || 0') of $(sink_stat 'j.requests') requests answered 503; the breaker opened $(( $(breaker_opens) - opens0 )) time(s) during the drain"

BIG=${BIG_BACKLOG:-1000000}
rss_kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
size() { psql -Atc "SELECT pg_size_pretty(pg_total_relation_size('bench_big'))"; }
worker_pid() { psql -Atc "SELECT pid FROM courier.worker_status() WHERE database = current_database()"; }
# restart_worker: terminate the delivery worker and wait for the launcher to start a new one (1-2 s),
# so that each memory figure starts from a fresh process, not from the heap the previous run left
restart_worker() {
    local old; old=$(worker_pid)
    psql -Atc "SELECT pg_terminate_backend($old)" >/dev/null
    for _ in $(seq 1 300); do
        worker=$(worker_pid)
        [ -n "$worker" ] && [ "$worker" != "$old" ] && [ -r "/proc/$worker/status" ] && return 0
        sleep 0.1
    done
    die "the delivery worker did not come back after pg_terminate_backend($old)"
}
# big KEYS LABEL CAP_S: a BIG-event backlog of KEYS keys built while the endpoint is down, then drained
big() {
    local keys=$1 label=$2 cap=$3 t0 t1 first last got anon0 peak_anon a failed0 end dead drained=1
    restart_worker
    psql -q -v ON_ERROR_STOP=1 -c "SELECT courier.create_outbox('bench_big', '$kafka_url', 'kafka_rest_v2', '{\"topic\": \"orders\", \"retry_base_ms\": 200, \"retry_max_ms\": 2000}')" >/dev/null
    echo "  $label"
    echo "    table size empty:            $(size)"
    sink_post /_sink/stop_listening >/dev/null
    t0=$(now_ms)
    for i in $(seq 0 9); do
        psql -q -c "INSERT INTO bench_big (key, topic, payload)
                    SELECT 'customer-' || (g % $keys), 'orders', jsonb_build_object('order_id', g, 'amount', (g % 997) / 10.0)
                      FROM generate_series($((i * BIG / 10 + 1)), $(((i + 1) * BIG / 10))) g"
    done
    t1=$(now_ms)
    printf '    committed %d events in %.1f s while the endpoint was down\n' "$BIG" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"
    echo "    breaker: $(psql -Atc "SELECT state || ', opened ' || opens || ' time(s)' FROM courier.breakers() WHERE endpoint = courier._origin('$kafka_url')")"
    echo "    table size with the backlog: $(size)"
    anon0=$(rss_kb "$worker" RssAnon)
    failed0=$(psql -Atc "SELECT failed_attempts FROM courier.outbox_stats WHERE outbox = 'bench_big'::regclass")
    sink_post /_sink/reset >/dev/null
    sink_post /_sink/start_listening >/dev/null
    t0=$(now_ms); peak_anon=$anon0; end=$(( t0 + cap * 1000 ))
    # (an event that used up courier.max_attempts while the endpoint was down is a dead letter: accounted for)
    dead=$(psql -Atc "SELECT count(*) FROM courier.dead_letters WHERE outbox = 'bench_big'::regclass")
    while [ $(( $(sink_num unique) + dead )) -lt "$BIG" ]; do
        a=$(rss_kb "$worker" RssAnon); [ "$a" -gt "$peak_anon" ] && peak_anon=$a
        [ "$(now_ms)" -lt "$end" ] || { drained=0; break; }
        sleep 0.2
    done
    t1=$(now_ms)
    if [ $drained = 1 ]; then
        while [ "$(pending bench_big)" != 0 ]; do sleep 0.05; done
    else
        stop_outbox bench_big
    fi
    got=$(sink_stat 'j.unique'); first=$(first_receipt_ms); last=$(sink_stat 'j.last_receipt_t')
    [ "$dead" = 0 ] || echo "    ${dead} event(s) used up courier.max_attempts while the endpoint was down: dead letters, not waited for"
    [ $drained = 1 ] || echo "    !! STOPPED after ${cap} s: ${got} of ${BIG} events delivered; the figures below are for those"
    printf '    recovery -> %s: %.1f s, %d events = %.0f events/s (includes waiting out the breaker, reset %s)\n' \
        "$([ $drained = 1 ] && echo 'empty backlog' || echo 'stop')" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')" "$got" \
        "$(rate "$got" "$t0" "$t1")" "$(psql -Atc 'SHOW courier.breaker_reset_ms')"
    if [ "$got" -gt 0 ]; then
        printf '    first -> last receipt: %.1f s = %.0f events/s, %d requests (%.0f events per request)\n' \
            "$(awk -v a="$first" -v b="$last" 'BEGIN{print (b-a)/1000}')" "$(rate "$got" "$first" "$last")" "$(sink_stat 'j.requests')" \
            "$(awk -v n="$got" -v r="$(sink_stat 'j.requests')" 'BEGIN{print n/r}')"
    else
        echo "    nothing received: $(sink_stat 'j.requests') requests, answers $(sink_stat 'j.status_counts'); breaker: $(psql -Atc "SELECT state || ', opened ' || opens || ' time(s)' FROM courier.breakers() WHERE endpoint = courier._origin('$kafka_url')"); outbox: $(psql -Atc "SELECT format('pending %s, status %s, last error %s', pending, status, coalesce(last_error, '-')) FROM courier.outbox_stats WHERE outbox = 'bench_big'::regclass")"
    fi
    printf '    worker private memory (RssAnon): %d kB before, %d kB (%.1f MB) peak while draining (target: no higher than ~56 MB); VmHWM %d kB (includes shared buffers touched)\n' \
        "$anon0" "$peak_anon" "$(awk -v k="$peak_anon" 'BEGIN{print k/1024}')" "$(rss_kb "$worker" VmHWM)"
    echo "    failed attempts: ${failed0} while the endpoint was down (before the breaker opened), $(( $(psql -Atc "SELECT failed_attempts FROM courier.outbox_stats WHERE outbox = 'bench_big'::regclass") - failed0 )) during the drain (a timeout caused by the worker would count here)"
    [ $drained = 1 ] && echo "    table size after the drain:  $(size); after VACUUM: $(psql -q -c 'VACUUM bench_big' && size)"
    psql -q -c "SELECT courier.drop_outbox('bench_big')" >/dev/null
}
echo
echo "5. a ${BIG}-event backlog built while the endpoint is down, drained when it comes back (Kafka REST; a freshly restarted worker each)"
big 10000 "5a. 10,000 keys" "$BIG_CAP_S"
big 1 "5b. one key (one request in flight at a time)" "$ONE_KEY_CAP_S"

echo
echo "6. hot keys: a ${BACKLOG}-event backlog committed in one transaction into an enabled outbox (Kafka REST, batched;"
echo "   a fresh outbox per run; commit = clock_timestamp() right after COMMIT returned)"
# hot KEYS LABEL [warm]: print one row, and set HOT_C2L / HOT_F2L (events/s) for the ratio below;
# warm: the outbox delivers one event first
hot() {
    local keys=$1 label=$2 ob=bench_hot out commit_ms first last got note=
    psql -q -v ON_ERROR_STOP=1 -c "SELECT courier.create_outbox('$ob', '$kafka_url', 'kafka_rest_v2', '{\"topic\": \"orders\"}')" >/dev/null
    if [ "${3:-}" = warm ]; then
        sink_post /_sink/reset >/dev/null
        psql -q -c "INSERT INTO $ob (key, topic, payload) VALUES ('warm-up', 'orders', '{}')"
        while [ "$(sink_num unique)" -lt 1 ] || [ "$(pending "$ob")" != 0 ]; do sleep 0.02; done
    fi
    sink_post /_sink/reset >/dev/null
    # the same payload as section 1; the commit time is taken in the database by the statement that
    # follows COMMIT in the same session (one local round trip after COMMIT returned)
    out=$(psql -qAt -v ON_ERROR_STOP=1 <<SQL
BEGIN;
INSERT INTO $ob (key, topic, payload)
SELECT 'customer-' || (i % $keys), 'orders',
       jsonb_build_object('order_id', i, 'amount', (i % 997) / 10.0, 'status', 'created')
  FROM generate_series(1, $BACKLOG) i;
SELECT extract(epoch FROM clock_timestamp()) * 1000;
COMMIT;
SELECT extract(epoch FROM clock_timestamp()) * 1000;
SQL
)
    commit_ms=$(echo "$out" | tail -n 1)
    if wait_unique "$BACKLOG" "$HOT_CAP_S"; then
        while [ "$(pending "$ob")" != 0 ]; do sleep 0.05; done
    else
        stop_outbox "$ob"
    fi
    got=$(sink_stat 'j.unique'); first=$(first_receipt_ms); last=$(sink_stat 'j.last_receipt_t')
    [ "$got" -ge "$BACKLOG" ] || note="  !! stopped after ${HOT_CAP_S} s (HOT_CAP_S): $got of $BACKLOG events, rates over those"
    if [ "$got" = 0 ]; then
        printf '  %-20s nothing received in %d s (%s requests)\n' "$label" "$HOT_CAP_S" "$(sink_stat 'j.requests')"
        HOT_C2L=0; HOT_F2L=0
        psql -q -c "SELECT courier.drop_outbox('$ob')" >/dev/null
        return 0
    fi
    HOT_C2L=$(rate "$got" "$commit_ms" "$last"); HOT_F2L=$(rate "$got" "$first" "$last")
    printf '  %-20s %8.1f ms   %6.2f s = %8d events/s   %6.2f s = %8d events/s   %6d%s\n' "$label" \
        "$(awk -v a="$commit_ms" -v b="$first" 'BEGIN{print b-a}')" \
        "$(awk -v a="$commit_ms" -v b="$last" 'BEGIN{print (b-a)/1000}')" "$HOT_C2L" \
        "$(awk -v a="$first" -v b="$last" 'BEGIN{print (b-a)/1000}')" "$HOT_F2L" "$(sink_stat 'j.requests')" "$note"
    local bad; bad=$(sink_stat 'j.duplicates + j.order_violations')
    [ "$bad" = 0 ] || echo "  !! $(sink_stat 'j.duplicates') duplicates, $(sink_stat 'j.order_violations') order violations: $(sink_stat 'j.violation_examples.slice(0, 3)')"
    echo "$label: pre-COMMIT/post-COMMIT ms $(echo "$out" | tr '\n' ' ') first $first last $last" >>"$RUNDIR/hot.log"
    psql -q -c "SELECT courier.drop_outbox('$ob')" >/dev/null
}
sink_post /_sink/config '{"order_field": "order_id"}' >/dev/null   # order per key checked on the way
printf '  %-20s %-14s %-30s %-30s %s\n' keys "commit->first" "commit->last receipt" "first->last receipt" requests
printf '  %-20s %-14s\n' "" "(target<=50ms)"
hot "$BACKLOG" "$BACKLOG (distinct)"; distinct_c2l=$HOT_C2L; distinct_f2l=$HOT_F2L
hot 1000 "1,000"; k1000_c2l=$HOT_C2L
hot 10 "10"; k10_c2l=$HOT_C2L; k10_f2l=$HOT_F2L
hot 1 "1"
hot "$BACKLOG" "$BACKLOG, warm outbox" warm
sink_post /_sink/config '{"order_field": null}' >/dev/null
echo "  (warm outbox: after one event was delivered, so the worker's generic plans were made on a one-row table)"
printf '  1,000 keys commit->last: %d events/s (target >= 100,000); 10 keys / distinct keys: %.2fx commit->last, %.2fx first->last (target >= 0.8x)\n' \
    "$k1000_c2l" "$(awk -v a="$k10_c2l" -v b="$distinct_c2l" 'BEGIN{print b ? a/b : 0}')" "$(awk -v a="$k10_f2l" -v b="$distinct_f2l" 'BEGIN{print b ? a/b : 0}')"
