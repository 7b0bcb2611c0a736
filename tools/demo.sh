#!/usr/bin/env bash
# tools/demo.sh — the main job, end to end, on a throwaway cluster:
#   installs what is missing, builds and installs pg_courier, starts a cluster under .run/demo with
#   pg_courier preloaded (server run as an unprivileged user), starts the local sink, and commits
#   business transactions (an order row + a CloudEvents webhook event + a Kafka REST record, in one
#   transaction) from concurrent clients while the worker delivers them.  Prints progress and the
#   figures, then removes everything it made.
#
#   ORDERS=5000 CLIENTS=4 tools/demo.sh
source "$(dirname "$0")/lib.sh"

ORDERS=${ORDERS:-5000}
CLIENTS=${CLIENTS:-4}

setup_base
build_install
make_rundir demo
cleanup() {
    sink_stop
    cluster_stop
    [ -n "${KEEP:-}" ] || rm -rf "$RUNDIR"
}
trap cleanup EXIT

cluster_start "$RUNDIR" "courier.poll_interval = '1s'"
sink_start "$RUNDIR/sink.log"
sink_post /_sink/config '{"record_data": false, "latency_field": "committed_ms", "order_field": "seq"}' >/dev/null
say "cluster on port $PGPORT (socket $PGHOST), sink on 127.0.0.1:$SINK_PORT"

psql -q -v ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION pg_courier;
CREATE TABLE customers (id int PRIMARY KEY, orders int NOT NULL DEFAULT 0);
INSERT INTO customers SELECT g FROM generate_series(1, 500) g;
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers,
    amount      numeric(10,2) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- where the events go: a CloudEvents webhook and a Kafka REST Proxy (both served by the local sink)
SELECT courier.create_outbox('order_events', 'http://127.0.0.1:$SINK_PORT/webhooks/orders');
SELECT courier.create_outbox('order_stream', 'http://127.0.0.1:$SINK_PORT/kafka', 'kafka_rest_v2',
                             '{"topic": "orders"}');

-- the business transaction: the order and its events commit together, or not at all
CREATE FUNCTION place_order(p_customer int, p_amount numeric) RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE
    v_order bigint;
    v_seq   int;
    v_event jsonb;
BEGIN
    UPDATE customers SET orders = orders + 1 WHERE id = p_customer RETURNING orders INTO v_seq;
    INSERT INTO orders (customer_id, amount) VALUES (p_customer, p_amount) RETURNING id INTO v_order;
    v_event := jsonb_build_object('order_id', v_order, 'customer_id', p_customer, 'amount', p_amount,
                                  'seq', v_seq,
                                  'committed_ms', extract(epoch FROM clock_timestamp()) * 1000);
    PERFORM courier.send('order_events', v_event, 'customer-' || p_customer, 'order.created');
    PERFORM courier.send('order_stream', v_event, 'customer-' || p_customer);
    RETURN v_order;
END
\$\$;
SQL

cat > "$RUNDIR/order.sql" <<'EOF'
\set customer random(1, 500)
SELECT place_order(:customer, (random() * 100)::numeric(10,2));
EOF

total=$((ORDERS * 2))
say "committing $ORDERS orders ($total events) from $CLIENTS clients while the worker delivers"
start_ms=$(date +%s%3N)
pgbench -n -c "$CLIENTS" -j 2 -t $((ORDERS / CLIENTS)) -f "$RUNDIR/order.sql" postgres >"$RUNDIR/pgbench.log" 2>&1 &
pgbench_pid=$!

printf '%8s  %10s  %10s  %10s\n' "time" "committed" "delivered" "pending" >&2
deadline=$(( $(date +%s) + 300 ))
while :; do
    committed=$(psql -Atc "SELECT count(*) * 2 FROM orders")
    pending=$(psql -Atc "SELECT coalesce(sum(pending), 0) FROM courier.outbox_stats")
    delivered=$(json_field "$(sink_get /_sink/stats)" 'j.unique')
    printf '%7.1fs  %10s  %10s  %10s\n' "$(echo "$(( $(date +%s%3N) - start_ms ))" | awk '{print $1/1000}')" \
        "$committed" "$delivered" "$pending" >&2
    if ! kill -0 "$pgbench_pid" 2>/dev/null && [ "$pending" = 0 ] && [ "$delivered" -ge "$committed" ]; then
        break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "delivery did not finish within 300 s"
    sleep 0.5
done
wait "$pgbench_pid" || { cat "$RUNDIR/pgbench.log" >&2; die "pgbench failed"; }

stats=$(sink_get /_sink/stats)
lat=$(sink_get "/_sink/latency?field=committed_ms")
first_last=$(sink_get "/_sink/events?from=1&limit=1" | json_field "$(cat)" 'j[0].t')
last=$(json_field "$stats" 'j.last_receipt_t')
elapsed_ms=$(awk -v a="$start_ms" -v b="$last" 'BEGIN {printf "%.0f", b - a}')
tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$RUNDIR/pgbench.log")

echo
echo "pg_courier demo: $ORDERS business transactions, each an order + 2 events, $CLIENTS clients"
printf '  %-34s %s\n' \
    "events committed" "$(psql -Atc 'SELECT count(*) * 2 FROM orders')" \
    "events delivered (unique)" "$(json_field "$stats" 'j.unique')" \
    "duplicates" "$(json_field "$stats" 'j.duplicates')" \
    "per-key order violations" "$(json_field "$stats" 'j.order_violations')" \
    "pending in the outboxes" "$(psql -Atc 'SELECT coalesce(sum(pending), 0) FROM courier.outbox_stats')" \
    "HTTP requests (webhook + Kafka)" "$(json_field "$stats" 'j.requests')" \
    "producer transactions/s" "$tps" \
    "delivered events/s (start to last)" "$(awk -v n="$(json_field "$stats" 'j.unique')" -v ms="$elapsed_ms" 'BEGIN {printf "%.0f", n * 1000 / ms}')" \
    "commit -> receipt latency p50" "$(json_field "$lat" 'j.p50.toFixed(1)') ms" \
    "commit -> receipt latency p99" "$(json_field "$lat" 'j.p99.toFixed(1)') ms" \
    "commit -> receipt latency max" "$(json_field "$lat" 'j.max.toFixed(1)') ms"
echo
psql -c "SELECT outbox, format, pending, delivered, requests, failed_attempts FROM courier.outbox_stats"
: "${first_last:=}"
